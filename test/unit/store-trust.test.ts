import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { packDirectory } from '../../src/artifact/pack.js';
import { buildManifest } from '../../src/artifact/release-id.js';
import { generateKeyPair, signManifest, type KeyPair } from '../../src/artifact/sign.js';
import type { ReleaseStore, StoreOptions } from '../../src/artifact/store.js';
import { openStore, rejectsWith } from '../support/artifact-support.js';
import { tempDir } from '../../support/temp-dir.js';

const oldKey = generateKeyPair();
const newKey = generateKeyPair();

/**
 * A store under `root` as an agent with these settings opens it: the same folder opened again
 * with other trusted keys is an agent restarted (or upgraded) with a new config.
 */
function open(root: string, opts: Partial<StoreOptions> = {}): Promise<ReleaseStore> {
  return openStore(root, { trustedKeys: [oldKey.publicKey], ...opts });
}

async function setup() {
  const tmp = await tempDir();
  const root = path.join(tmp.dir, 'store');
  /** Packs a small tree whose content is `id` as release `id`, signed with `key` (none: unsigned). */
  const artifact = async (id: string, key: KeyPair | null = oldKey) => {
    const src = path.join(tmp.dir, 'src', id);
    await mkdir(src, { recursive: true });
    await writeFile(path.join(src, 'VERSION'), id);
    const archive = path.join(tmp.dir, `${id}.tar.gz`);
    const packed = await packDirectory(src, archive);
    const manifest = buildManifest({ app: 'web', releaseId: id, archive: packed, now: new Date() });
    return { archive, signed: key ? signManifest(manifest, key.privateKeyPem) : { manifest } };
  };
  return { tmp, root, artifact };
}

describe('a stored release is checked at every use, against the keys trusted now', () => {
  it('one signed with a key since removed from trustedKeys is refused with KEY_REVOKED and listed untrusted', async () => {
    const { tmp, root, artifact } = await setup();
    try {
      const before = await open(root, { trustedKeys: [oldKey.publicKey, newKey.publicKey] });
      const r1 = await artifact('r1', oldKey);
      const r2 = await artifact('r2', newKey);
      await before.add(r1.archive, r1.signed);
      await before.add(r2.archive, r2.signed);
      assert.equal((await before.get('r1')).id, 'r1');

      // The agent restarted with the old key revoked.
      const after = await open(root, { trustedKeys: [newKey.publicKey] });
      const err = await rejectsWith(() => after.get('r1'), 'KEY_REVOKED');
      assert.match(err.message, new RegExp(oldKey.keyId));
      // force is about failed releases only: it never lets a revoked one through.
      await rejectsWith(() => after.get('r1', { force: true }), 'KEY_REVOKED');
      assert.equal((await after.get('r2')).id, 'r2');
      const listed = Object.fromEntries((await after.list('r2', 'r1')).map((r) => [r.id, r]));
      assert.equal(listed.r1!.status, 'untrusted');
      assert.match(listed.r1!.untrustedReason ?? '', new RegExp(oldKey.keyId));
      assert.equal(listed.r2!.status, 'current');
      assert.equal(listed.r2!.untrustedReason, undefined);
    } finally {
      await tmp.cleanup();
    }
  });

  it('signed again with a trusted key and added again, a revoked release is trusted again (no new unpack)', async () => {
    const { tmp, root, artifact } = await setup();
    try {
      const r1 = await artifact('r1', oldKey);
      await (await open(root)).add(r1.archive, r1.signed);
      const store = await open(root, { trustedKeys: [newKey.publicKey] });
      await rejectsWith(() => store.get('r1'), 'KEY_REVOKED');
      const steps: string[] = [];
      await store.addFrom(
        signManifest(r1.signed.manifest, newKey.privateKeyPem),
        () => assert.fail('the store has the archive: nothing to upload'),
        (step, _ms, detail) => steps.push(`${step}: ${detail}`),
      );
      assert.ok(
        steps.some((s) => s.includes('unpacked before')),
        steps.join('\n'),
      );
      assert.equal((await store.get('r1')).id, 'r1');
    } finally {
      await tmp.cleanup();
    }
  });

  it('one stored unsigned is refused once unsigned artifacts are no longer allowed', async () => {
    const { tmp, root, artifact } = await setup();
    try {
      const u1 = await artifact('u1', null);
      await (await open(root, { allowUnsigned: true })).add(u1.archive, u1.signed);
      const store = await open(root, { allowUnsigned: false });
      await rejectsWith(() => store.get('u1'), 'SIGNATURE_MISSING');
      assert.equal((await store.list(undefined, undefined))[0]!.status, 'untrusted');
    } finally {
      await tmp.cleanup();
    }
  });

  it('one marked failed is refused with RELEASE_FAILED, saying when and why, unless forced; once it serves, the mark goes', async () => {
    const { tmp, root, artifact } = await setup();
    try {
      const store = await open(root);
      const f1 = await artifact('f1');
      await store.add(f1.archive, f1.signed);
      await store.markFailed('f1', 'GENERATION_EXITED: exited with code 1 at start');
      const err = await rejectsWith(() => store.get('f1'), 'RELEASE_FAILED');
      assert.match(err.message, /exited with code 1 at start/);
      assert.match(err.message, /--force/);
      assert.equal((await store.get('f1', { force: true })).id, 'f1');
      await store.markServed('f1');
      assert.equal((await store.get('f1')).id, 'f1');
      assert.equal((await store.list(undefined, undefined))[0]!.status, 'kept');
    } finally {
      await tmp.cleanup();
    }
  });
});
