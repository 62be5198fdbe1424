import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync } from 'node:crypto';
import { appendFile, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { keygen } from '../../src/artifact/keygen.js';
import { type Manifest } from '../../src/protocol/manifest.js';
import { packDirectory } from '../../src/artifact/pack.js';
import { buildManifest } from '../../src/artifact/release-id.js';
import {
  generateKeyPair,
  keyIdOf,
  parseSignedManifest,
  signManifest,
  verifyArchiveDigest,
  verifyManifest,
} from '../../src/artifact/sign.js';
import { rejectsWith, writeTree } from '../support/artifact-support.js';
import { tempDir } from '../../support/temp-dir.js';

const ALLOW = { allowUnsigned: true };
const REFUSE = { allowUnsigned: false };

describe('signing and verifying', () => {
  let tmp: { dir: string; cleanup: () => Promise<void> };
  let archive: string;
  let manifest: Manifest;
  const key = generateKeyPair();
  const other = generateKeyPair();

  before(async () => {
    tmp = await tempDir('baton-sign-');
    const src = path.join(tmp.dir, 'app');
    await writeTree(src, { 'server.js': 'console.log(1)\n', 'lib/a.js': 'export {}\n' });
    archive = path.join(tmp.dir, 'app.tgz');
    const packed = await packDirectory(src, archive);
    manifest = buildManifest({
      app: 'web',
      releaseId: '20261124-153000-abc1234',
      archive: packed,
      git: { sha: 'abc1234def', ref: 'refs/heads/main' },
      now: new Date('2026-11-24T15:30:00Z'),
    });
  });
  after(() => tmp.cleanup());

  it('makes keys in the documented format', () => {
    assert.match(key.publicKey, /^ed25519:[A-Za-z0-9+/]{43}=$/);
    assert.match(key.privateKeyPem, /^-----BEGIN PRIVATE KEY-----/);
    const raw = Buffer.from(key.publicKey.slice('ed25519:'.length), 'base64');
    assert.equal(raw.length, 32);
    assert.equal(key.keyId, createHash('sha256').update(raw).digest('hex').slice(0, 16));
    assert.equal(keyIdOf(key.publicKey), key.keyId);
    assert.notEqual(other.keyId, key.keyId);
  });

  it('verifies a good signature, also after a trip through JSON', async () => {
    const signed = signManifest(manifest, key.privateKeyPem);
    assert.equal(signed.signature?.keyId, key.keyId);
    const parsed = parseSignedManifest(JSON.stringify(signed), 'manifest.json');
    assert.deepEqual(verifyManifest(parsed, [other.publicKey, key.publicKey], REFUSE), manifest);
    await verifyArchiveDigest(archive, parsed.manifest);
  });

  it('signs the canonical JSON: the order of keys does not matter', () => {
    const signed = signManifest(manifest, key.privateKeyPem);
    const reordered = Object.fromEntries(Object.entries(manifest).reverse()) as Manifest;
    assert.notEqual(JSON.stringify(reordered), JSON.stringify(manifest));
    verifyManifest({ manifest: reordered, signature: signed.signature }, [key.publicKey], REFUSE);
  });

  it('finds a tampered archive: another byte, or one more', async () => {
    const copy = path.join(tmp.dir, 'tampered.tgz');
    const bytes = await readFile(archive);
    bytes.writeUInt8(bytes.readUInt8(bytes.length - 5) ^ 0x01, bytes.length - 5);
    await writeFile(copy, bytes);
    await rejectsWith(() => verifyArchiveDigest(copy, manifest), 'DIGEST_MISMATCH');
    await writeFile(copy, await readFile(archive));
    await appendFile(copy, Buffer.from([0]));
    await rejectsWith(() => verifyArchiveDigest(copy, manifest), 'DIGEST_MISMATCH');
  });

  it('finds a tampered manifest', () => {
    const signed = signManifest(manifest, key.privateKeyPem);
    for (const changed of [
      { ...manifest, releaseId: '20261124-153000-evil000' },
      { ...manifest, archive: { ...manifest.archive, sha256: 'f'.repeat(64) } },
      { ...manifest, git: { sha: 'abc1234def' } },
    ])
      assert.throws(
        () => verifyManifest({ ...signed, manifest: changed }, [key.publicKey], REFUSE),
        { code: 'SIGNATURE_INVALID' },
      );
  });

  it('refuses a signature by a key it does not trust', () => {
    const signed = signManifest(manifest, other.privateKeyPem);
    assert.throws(() => verifyManifest(signed, [key.publicKey], REFUSE), { code: 'KEY_UNKNOWN' });
    assert.throws(() => verifyManifest(signed, [], ALLOW), { code: 'KEY_UNKNOWN' });
  });

  it('refuses a signature made by one key under the id of a trusted one', () => {
    const forged = signManifest(manifest, other.privateKeyPem);
    forged.signature!.keyId = key.keyId;
    assert.throws(() => verifyManifest(forged, [key.publicKey], REFUSE), {
      code: 'SIGNATURE_INVALID',
    });
  });

  it('refuses an unsigned manifest unless unsigned ones are allowed', () => {
    assert.throws(() => verifyManifest({ manifest }, [key.publicKey], REFUSE), {
      code: 'SIGNATURE_MISSING',
    });
    assert.deepEqual(verifyManifest({ manifest }, [key.publicKey], ALLOW), manifest);
  });

  it('checks a signature that is there even when unsigned ones are allowed', () => {
    const signed = signManifest(manifest, key.privateKeyPem);
    const changed = { ...signed, manifest: { ...manifest, app: 'other' } };
    assert.throws(() => verifyManifest(changed, [key.publicKey], ALLOW), {
      code: 'SIGNATURE_INVALID',
    });
  });

  it('refuses malformed keys', () => {
    const signed = signManifest(manifest, key.privateKeyPem);
    for (const bad of [
      'ed25519:',
      'ed25519:not base64!',
      `ed25519:${Buffer.alloc(31).toString('base64')}`,
      `ed25519:${Buffer.alloc(33).toString('base64')}`,
      `rsa:${key.publicKey.slice('ed25519:'.length)}`,
      key.privateKeyPem,
    ]) {
      assert.throws(() => keyIdOf(bad), { code: 'KEY_INVALID' }, bad);
      assert.throws(() => verifyManifest(signed, [key.publicKey, bad], REFUSE), {
        code: 'KEY_INVALID',
      });
    }
    assert.throws(() => signManifest(manifest, 'not a pem'), { code: 'KEY_INVALID' });
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({
      type: 'pkcs8',
      format: 'pem',
    });
    assert.throws(() => signManifest(manifest, rsa.toString()), { code: 'KEY_INVALID' });
  });

  it('refuses a manifest file that is not one', () => {
    const signed = signManifest(manifest, key.privateKeyPem);
    for (const bad of [
      'not json',
      '[]',
      JSON.stringify({ manifest: { ...manifest, extra: 1 }, signature: signed.signature }),
      JSON.stringify({ ...signed, signature: { ...signed.signature, alg: 'rsa' } }),
      JSON.stringify({ ...signed, signature: { ...signed.signature, value: 'short' } }),
      JSON.stringify({ manifest: { ...manifest, version: 2 } }),
      ' '.repeat(70 * 1024),
    ])
      assert.throws(() => parseSignedManifest(bad, 'manifest.json'), { code: 'MANIFEST_INVALID' });
    assert.throws(() => parseSignedManifest({ manifest: null }, 'frame'), {
      code: 'MANIFEST_INVALID',
    });
  });
});

describe('keygen', () => {
  let tmp: { dir: string; cleanup: () => Promise<void> };
  before(async () => (tmp = await tempDir('baton-keygen-')));
  after(() => tmp.cleanup());

  it('writes a private key only its owner reads and a public key line that verifies', async () => {
    const dir = path.join(tmp.dir, 'keys');
    const k = await keygen(dir);
    assert.equal((await stat(k.privateKeyFile)).mode & 0o777, 0o600);
    const pub = (await readFile(k.publicKeyFile, 'utf8')).trim();
    assert.equal(pub, k.publicKey);
    const m = buildManifest({
      app: 'web',
      releaseId: 'r1',
      archive: { sha256: 'a'.repeat(64), size: 1, entries: 1 },
      now: new Date(),
    });
    const signed = signManifest(m, await readFile(k.privateKeyFile, 'utf8'));
    assert.deepEqual(verifyManifest(signed, [pub], REFUSE), m);
  });

  it('never overwrites a key', async () => {
    const dir = path.join(tmp.dir, 'twice');
    const first = await keygen(dir);
    const before = await readFile(first.privateKeyFile, 'utf8');
    await rejectsWith(() => keygen(dir), 'USAGE');
    assert.equal(await readFile(first.privateKeyFile, 'utf8'), before);
  });
});
