import assert from 'node:assert/strict';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { unpackRelease } from '../../src/artifact/unpack.js';
import {
  assertRefused,
  longName,
  pax,
  scene,
  tarBlocks,
  writeGz,
  type Scene,
} from '../support/tar-craft.js';

// Entries whose path climbs out of the release with '..', in every header field that can carry a
// path. A good entry comes first each time, so a refusal must also undo what was already written.
describe('hostile archive: path traversal with ..', () => {
  let s: Scene;
  beforeEach(async () => (s = await scene()));
  afterEach(() => s.cleanup());

  const good = { path: 'good.txt', body: 'fine\n' };

  it('refuses ../../outside/pwned in the ustar name', async () => {
    await writeGz(s.archive, tarBlocks([good, { path: '../../outside/pwned', body: 'owned\n' }]));
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_PATH_ESCAPE');
    await s.assertUntouched();
  });

  it('refuses a climb hidden after a real directory', async () => {
    await writeGz(
      s.archive,
      tarBlocks([
        good,
        { path: 'app/', type: '5' },
        { path: 'app/../../../outside/pwned', body: 'owned\n' },
      ]),
    );
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_PATH_ESCAPE');
    await s.assertUntouched();
  });

  it('refuses a climb carried in the ustar prefix field', async () => {
    await writeGz(
      s.archive,
      tarBlocks([good, { prefix: '../..', path: 'outside/pwned', body: 'x' }]),
    );
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_PATH_ESCAPE');
    await s.assertUntouched();
  });

  it('refuses a climb carried in a PAX path record behind an innocent ustar name', async () => {
    await writeGz(
      s.archive,
      tarBlocks([
        good,
        pax({ path: '../../outside/pwned' }),
        { path: 'innocent.txt', body: 'owned\n' },
      ]),
    );
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_PATH_ESCAPE');
    await s.assertUntouched();
  });

  it('refuses a climb carried in a GNU long name', async () => {
    const name = `${'a/'.repeat(60)}${'../'.repeat(62)}outside/pwned`;
    await writeGz(s.archive, tarBlocks([good, longName(name), { path: 'short', body: 'x' }]));
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_PATH_ESCAPE');
    await s.assertUntouched();
  });

  it('refuses a directory entry that climbs out', async () => {
    await writeGz(s.archive, tarBlocks([good, { path: '../../outside/made-dir/', type: '5' }]));
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_PATH_ESCAPE');
    await s.assertUntouched();
    await assert.rejects(stat(path.join(s.outside, 'made-dir')), { code: 'ENOENT' });
  });

  it("refuses even a '..' that would stay inside (a/../b): simplest safe rule", async () => {
    await writeGz(
      s.archive,
      tarBlocks([
        { path: 'a/', type: '5' },
        { path: 'a/../b', body: 'x' },
      ]),
    );
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_PATH_ESCAPE');
    await s.assertUntouched();
  });
});
