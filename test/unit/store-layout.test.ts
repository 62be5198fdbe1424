import assert from 'node:assert/strict';
import { mkdir, readdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import type { Manifest } from '../../src/protocol/manifest.js';
import { packDirectory } from '../../src/artifact/pack.js';
import { buildManifest } from '../../src/artifact/release-id.js';
import { generateKeyPair, signManifest } from '../../src/artifact/sign.js';
import { openStore, rejectsWith } from '../support/artifact-support.js';
import { tempDir } from '../../support/temp-dir.js';

const keys = generateKeyPair();

async function setup() {
  const tmp = await tempDir();
  const root = path.join(tmp.dir, 'store');
  const open = () => openStore(root, { keep: 2, trustedKeys: [keys.publicKey] });
  /** Packs a tree whose content is `id`, signed as release `releaseId` (default `id`). */
  const artifact = async (id: string, createdAt = new Date(), releaseId = id) => {
    const src = path.join(tmp.dir, 'src', id);
    await mkdir(src, { recursive: true });
    await writeFile(path.join(src, 'VERSION'), id);
    const archive = path.join(tmp.dir, `${id}.tar.gz`);
    const packed = await packDirectory(src, archive);
    const built = buildManifest({ app: 'web', releaseId: id, archive: packed, now: createdAt });
    // Set after buildManifest, which refuses such ids itself: the store must refuse them too
    // (an artifact packed by hand, or by an older baton).
    const manifest: Manifest = { ...built, releaseId };
    return { archive, signed: signManifest(manifest, keys.privateKeyPem) };
  };
  return { tmp, root, open, artifact };
}

describe('release store layout', () => {
  it('an artifact with release id X.json is refused with RELEASE_ID_INVALID, and X keeps its record', async () => {
    const { tmp, open, artifact } = await setup();
    try {
      const store = await open();
      const x = await artifact('x1');
      await store.add(x.archive, x.signed);
      const attack = await artifact('attack', new Date(), 'x1.json');
      await rejectsWith(() => store.add(attack.archive, attack.signed), 'RELEASE_ID_INVALID');
      await rejectsWith(
        () =>
          store.add(
            attack.archive,
            signManifest({ ...attack.signed.manifest, releaseId: 'x1.JSON' }, keys.privateKeyPem),
          ),
        'RELEASE_ID_INVALID',
      );
      assert.equal(
        (await readdir(store.artifacts)).length,
        1,
        'refused before its archive is copied',
      );
      const got = await store.get('x1');
      assert.equal(await readFile(path.join(got.dir, 'VERSION'), 'utf8'), 'x1');
      assert.deepEqual(
        (await store.list(undefined, undefined)).map((r) => r.id),
        ['x1'],
      );
    } finally {
      await tmp.cleanup();
    }
  });

  it('baton pack refuses a release id ending in .json', () => {
    assert.throws(
      () =>
        buildManifest({
          app: 'web',
          releaseId: 'v1.json',
          archive: { sha256: '0'.repeat(64), size: 1, entries: 1 },
          now: new Date(),
        }),
      { code: 'RELEASE_ID_INVALID' },
    );
  });

  it('a store laid out the old way (records beside the release folders) is migrated at start, a release with an id ending in .json included, and then keeps X and X.json apart', async () => {
    const { tmp, root, open, artifact } = await setup();
    try {
      const t = Date.parse('2026-01-01T00:00:00Z');
      const store = await open();
      for (const [i, id] of ['r1', 'r2', 'r3'].entries()) {
        const a = await artifact(id, new Date(t + i * 1000));
        await store.add(a.archive, a.signed);
      }
      // The old layout: releases/<id>.json beside releases/<id>/, and no records/ folder. Plus
      // what an older baton let in: release "x1.json", its folder releases/x1.json/ and its
      // record releases/x1.json.json.
      const releasesDir = path.join(root, 'releases');
      const recordsDir = path.join(root, 'records');
      for (const name of await readdir(recordsDir).catch(() => []))
        await rename(path.join(recordsDir, name), path.join(releasesDir, name));
      await rm(recordsDir, { recursive: true, force: true });
      const old = await artifact('old-json', new Date(t + 3000), 'x1.json');
      await mkdir(path.join(releasesDir, 'x1.json'));
      await writeFile(path.join(releasesDir, 'x1.json', 'VERSION'), 'x1.json');
      await writeFile(
        path.join(releasesDir, 'x1.json.json'),
        JSON.stringify({ ...old.signed, preparedAt: new Date().toISOString() }),
      );

      const reopened = await open();
      assert.deepEqual(
        (await reopened.list('r3', 'r2')).map((r) => `${r.id}:${r.status}`),
        ['x1.json:kept', 'r3:current', 'r2:previous', 'r1:kept'],
      );
      assert.equal((await reopened.get('r1')).id, 'r1');
      assert.equal((await reopened.get('x1.json')).id, 'x1.json');

      // Release x1 beside x1.json: neither touches the other (under the old layout x1's record
      // would have been written onto the folder of x1.json).
      const x1 = await artifact('x1', new Date(t + 4000));
      await reopened.add(x1.archive, x1.signed);
      assert.equal(
        await readFile(path.join((await reopened.get('x1')).dir, 'VERSION'), 'utf8'),
        'x1',
      );
      const xj = await reopened.get('x1.json');
      assert.equal(await readFile(path.join(xj.dir, 'VERSION'), 'utf8'), 'x1.json');

      // Where the records went.
      assert.deepEqual((await readdir(recordsDir)).sort(), [
        'r1.json',
        'r2.json',
        'r3.json',
        'x1.json',
        'x1.json.json',
      ]);
      assert.deepEqual((await readdir(releasesDir)).sort(), ['r1', 'r2', 'r3', 'x1', 'x1.json']);

      // Pruning works on the migrated store: keep 2, plus current and previous.
      const { removed } = await reopened.prune('r3', 'r2');
      assert.deepEqual(removed.sort(), ['r1']);
      assert.deepEqual((await readdir(recordsDir)).sort(), [
        'r2.json',
        'r3.json',
        'x1.json',
        'x1.json.json',
      ]);
      // A second start finds nothing left to move.
      await open();
      assert.equal((await readdir(releasesDir)).filter((n) => n.endsWith('.json')).length, 1);
    } finally {
      await tmp.cleanup();
    }
  });

  it('prune removes a release folder that has no record, never current or previous, and nothing outside the store', async () => {
    const { tmp, root, open, artifact } = await setup();
    try {
      const store = await open();
      const t = Date.parse('2026-01-01T00:00:00Z');
      for (const [i, id] of ['r1', 'r2'].entries()) {
        const a = await artifact(id, new Date(t + i * 1000));
        await store.add(a.archive, a.signed);
      }
      const releasesDir = path.join(root, 'releases');
      // What a store damaged under the old layout kept: folders whose record was lost.
      for (const orphan of ['lost', 'lost-current'])
        await mkdir(path.join(releasesDir, orphan, 'sub'), { recursive: true });
      await writeFile(path.join(releasesDir, 'lost', 'sub', 'f'), 'x'.repeat(100));
      // A link out of the store is not followed, nor is what it points to removed.
      const outside = path.join(tmp.dir, 'outside');
      await mkdir(outside);
      await writeFile(path.join(outside, 'keep-me'), 'x');
      await symlink(outside, path.join(releasesDir, 'link-out'));

      const { removed, bytesFreed } = await store.prune('lost-current', 'r2');
      assert.deepEqual(removed.sort(), ['lost']);
      assert.ok(bytesFreed >= 100);
      assert.deepEqual((await readdir(releasesDir)).sort(), [
        'link-out',
        'lost-current',
        'r1',
        'r2',
      ]);
      assert.deepEqual(await readdir(outside), ['keep-me']);
      await rejectsWith(() => store.get('../outside'), 'RELEASE_UNKNOWN');
      await rejectsWith(() => store.get('lost-current'), 'RELEASE_UNKNOWN');
    } finally {
      await tmp.cleanup();
    }
  });
});
