import assert from 'node:assert/strict';
import { createReadStream } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { packDirectory } from '../../src/artifact/pack.js';
import { buildManifest } from '../../src/artifact/release-id.js';
import { generateKeyPair, signManifest } from '../../src/artifact/sign.js';
import { openStore } from '../support/artifact-support.js';
import { tempDir } from '../../support/temp-dir.js';

const keys = generateKeyPair();

async function setup() {
  const tmp = await tempDir();
  const store = await openStore(path.join(tmp.dir, 'store'), {
    keep: 2,
    trustedKeys: [keys.publicKey],
  });
  /** Packs a small tree whose content is `id`, signed, as release `id`. */
  const artifact = async (id: string, createdAt = new Date(), content = id) => {
    const src = path.join(tmp.dir, 'src', id);
    await mkdir(src, { recursive: true });
    await writeFile(path.join(src, 'VERSION'), content);
    const archive = path.join(tmp.dir, `${id}.tar.gz`);
    const packed = await packDirectory(src, archive);
    const manifest = buildManifest({ app: 'web', releaseId: id, archive: packed, now: createdAt });
    return { archive, signed: signManifest(manifest, keys.privateKeyPem) };
  };
  return { tmp, store, artifact };
}

describe('ReleaseStore', () => {
  it('an interrupted upload leaves nothing behind', async () => {
    const { tmp, store, artifact } = await setup();
    try {
      const a = await artifact('r1');
      const bytes = await readFile(a.archive);
      const broken = new Readable({
        read() {
          this.push(bytes.subarray(0, 10));
          this.destroy(new Error('connection lost'));
        },
      });
      await assert.rejects(store.receive(broken, a.signed.manifest.archive), /connection lost/);
      assert.deepEqual(await readdir(store.artifacts), []);
      assert.deepEqual(await readdir(path.join(tmp.dir, 'store', 'tmp')), []);
      assert.equal(await store.hasArchive(a.signed.manifest.archive.sha256), false);
    } finally {
      await tmp.cleanup();
    }
  });

  it('refuses an upload longer than its manifest says, and one whose digest differs', async () => {
    const { tmp, store, artifact } = await setup();
    try {
      const a = await artifact('r1');
      const size = a.signed.manifest.archive.size;
      await assert.rejects(
        store.receive(createReadStream(a.archive), {
          ...a.signed.manifest.archive,
          size: size - 1,
        }),
        {
          code: 'DIGEST_MISMATCH',
        },
      );
      await assert.rejects(
        store.receive(createReadStream(a.archive), {
          ...a.signed.manifest.archive,
          sha256: '0'.repeat(64),
        }),
        {
          code: 'DIGEST_MISMATCH',
        },
      );
      assert.deepEqual(await readdir(store.artifacts), []);
    } finally {
      await tmp.cleanup();
    }
  });

  it('adds two releases at once, each whole', async () => {
    const { tmp, store, artifact } = await setup();
    try {
      const [a, b] = await Promise.all([artifact('r1'), artifact('r2')]);
      const [ra, rb] = await Promise.all([
        store.add(a.archive, a.signed),
        store.add(b.archive, b.signed),
      ]);
      assert.equal(await readFile(path.join(ra.dir, 'VERSION'), 'utf8'), 'r1');
      assert.equal(await readFile(path.join(rb.dir, 'VERSION'), 'utf8'), 'r2');
      assert.deepEqual((await store.list(undefined, undefined)).map((r) => r.id).sort(), [
        'r1',
        'r2',
      ]);
    } finally {
      await tmp.cleanup();
    }
  });

  it('adding the same release again is free; the same id with other contents is refused', async () => {
    const { tmp, store, artifact } = await setup();
    try {
      const a = await artifact('r1');
      const first = await store.add(a.archive, a.signed);
      const again = await store.add('/nonexistent/path.tar.gz', a.signed);
      assert.equal(again.dir, first.dir);
      const other = await artifact('r1', new Date(), 'other contents');
      await assert.rejects(store.add(other.archive, other.signed), { code: 'RELEASE_EXISTS' });
    } finally {
      await tmp.cleanup();
    }
  });

  it('prunes to `keep`, never current or previous, and frees their archives', async () => {
    const { tmp, store, artifact } = await setup();
    try {
      const t = Date.parse('2026-01-01T00:00:00Z');
      for (const [i, id] of ['r1', 'r2', 'r3', 'r4'].entries()) {
        const a = await artifact(id, new Date(t + i * 1000));
        await store.add(a.archive, a.signed);
      }
      // r1 is current (a rollback target kept forever while current), r4 and r3 the newest.
      const { removed, bytesFreed } = await store.prune('r1', 'r4');
      assert.deepEqual(removed, ['r2']);
      assert.ok(bytesFreed > 0);
      assert.deepEqual(
        (await store.list('r1', 'r4')).map((r) => `${r.id}:${r.status}`),
        ['r4:previous', 'r3:kept', 'r1:current'],
      );
      assert.equal((await readdir(store.artifacts)).length, 3);
      await assert.rejects(store.get('r2'), { code: 'RELEASE_UNKNOWN' });
    } finally {
      await tmp.cleanup();
    }
  });

  it('refuses an artifact meant for another app', async () => {
    const { tmp, store, artifact } = await setup();
    try {
      const a = await artifact('r1');
      const other = signManifest({ ...a.signed.manifest, app: 'api' }, keys.privateKeyPem);
      await assert.rejects(store.add(a.archive, other), { code: 'MANIFEST_INVALID' });
    } finally {
      await tmp.cleanup();
    }
  });
});
