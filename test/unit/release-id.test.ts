import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { ReleaseIdSchema } from '../../src/protocol/manifest.js';
import { buildManifest, makeReleaseId } from '../../src/artifact/release-id.js';
import { ROOT } from '../../support/paths.js';

const DIGEST = '0123456789abcdef'.repeat(4);
const ARCHIVE = { sha256: DIGEST, size: 1234, entries: 5 };

describe('release ids', () => {
  it('is YYYYMMDD-HHMMSS-<7 hex of the git sha>, in UTC', () => {
    // 23:59:58 at UTC-05:00 is the next day in UTC.
    const id = makeReleaseId(new Date('2026-11-24T23:59:58-05:00'), 'ABCDEF0123456789', DIGEST);
    assert.equal(id, '20261125-045958-abcdef0');
    assert.ok(ReleaseIdSchema.safeParse(id).success);
  });

  it('takes 7 hex of the archive digest when there is no git sha', () => {
    const id = makeReleaseId(new Date(Date.UTC(2026, 0, 2, 3, 4, 5, 678)), undefined, DIGEST);
    assert.equal(id, '20260102-030405-0123456');
    assert.match(id, /^\d{8}-\d{6}-[0-9a-f]{7}$/);
  });

  it('refuses what is not hex, or a date that is not one', () => {
    const now = new Date();
    for (const [sha, digest] of [
      ['not-a-sha', DIGEST],
      ['abc12', DIGEST],
      [undefined, 'xyz'],
    ] as const)
      assert.throws(() => makeReleaseId(now, sha, digest), { code: 'MANIFEST_INVALID' });
    assert.throws(() => makeReleaseId(new Date('nope'), 'abcdef0', DIGEST), {
      code: 'MANIFEST_INVALID',
    });
  });
});

describe('buildManifest', () => {
  it('builds a valid manifest with the tool version from package.json', async () => {
    const pkg = JSON.parse(await readFile(path.join(ROOT, 'package.json'), 'utf8')) as {
      version: string;
    };
    const now = new Date('2026-11-24T15:30:00.000Z');
    const manifest = buildManifest({
      app: 'web',
      releaseId: makeReleaseId(now, 'abcdef0123', ARCHIVE.sha256),
      archive: ARCHIVE,
      git: { sha: 'abcdef0123', ref: 'refs/heads/main' },
      run: { repository: 'acme/web', id: '42', attempt: '1', actor: 'octocat' },
      now,
    });
    assert.deepEqual(manifest, {
      version: 1,
      app: 'web',
      releaseId: '20261124-153000-abcdef0',
      archive: ARCHIVE,
      git: { sha: 'abcdef0123', ref: 'refs/heads/main' },
      run: { repository: 'acme/web', id: '42', attempt: '1', actor: 'octocat' },
      createdAt: '2026-11-24T15:30:00.000Z',
      tool: { name: 'baton', version: pkg.version },
    });
  });

  it('refuses what the manifest schema refuses', () => {
    const base = { app: 'web', releaseId: 'r1', archive: ARCHIVE, now: new Date() };
    for (const bad of [
      { ...base, app: '../etc' },
      { ...base, releaseId: 'has space' },
      { ...base, archive: { ...ARCHIVE, sha256: 'XYZ' } },
      { ...base, archive: { ...ARCHIVE, size: -1 } },
      { ...base, git: { sha: 'not hex' } },
    ])
      assert.throws(() => buildManifest(bad), { code: 'MANIFEST_INVALID' });
  });
});
