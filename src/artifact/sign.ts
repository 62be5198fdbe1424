import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  sign,
  verify,
  type KeyObject,
} from 'node:crypto';
import { BatonError, errorMessage, formatIssues } from '../errors.js';
import {
  canonicalJson,
  SignedManifestSchema,
  type Manifest,
  type SignedManifest,
} from '../protocol/manifest.js';
import { hashFile } from './pack.js';

/** A manifest file bigger than this is not a manifest. */
export const MAX_MANIFEST_BYTES = 64 * 1024;

const KEY_PREFIX = 'ed25519:';
/** base64 of exactly 32 bytes. */
const RAW_KEY = /^[A-Za-z0-9+/]{43}=$/;

export interface KeyPair {
  /** PKCS#8 PEM: keep it secret (a CI secret, a 0600 file). */
  privateKeyPem: string;
  /** `ed25519:<base64 of the raw 32-byte key>`: goes into the agent's trusted keys. */
  publicKey: string;
  keyId: string;
}

export function generateKeyPair(): KeyPair {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const text = publicKeyText(publicKey);
  return {
    privateKeyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicKey: text,
    keyId: keyIdOf(text),
  };
}

/** The first 16 hex digits of sha256 of the raw 32-byte key. Throws KEY_INVALID for malformed text. */
export function keyIdOf(publicKey: string): string {
  return createHash('sha256').update(rawPublicKey(publicKey)).digest('hex').slice(0, 16);
}

/** Signs canonicalJson(manifest) with an ed25519 private key (PEM). */
export function signManifest(manifest: Manifest, privateKeyPem: string): SignedManifest {
  const key = parsePrivateKey(privateKeyPem);
  const value = sign(null, Buffer.from(canonicalJson(manifest)), key).toString('base64');
  return {
    manifest,
    signature: { alg: 'ed25519', keyId: keyIdOf(publicKeyText(createPublicKey(key))), value },
  };
}

/**
 * Checks the signature against the trusted keys and returns the manifest it covers. A signature
 * that is there must verify, even when unsigned artifacts are allowed.
 */
export function verifyManifest(
  signed: SignedManifest,
  trustedPublicKeys: readonly string[],
  opts: { allowUnsigned: boolean },
): Manifest {
  const trusted = trustedPublicKeys.map((text) => ({ text, raw: rawPublicKey(text) }));
  const { manifest, signature } = signed;
  if (!signature) {
    if (opts.allowUnsigned) return manifest;
    throw new BatonError(
      'SIGNATURE_MISSING',
      `release ${manifest.releaseId} is not signed; sign it (baton pack --key) or allow unsigned artifacts in the agent's config`,
    );
  }
  const candidates = trusted.filter((k) => keyIdOf(k.text) === signature.keyId);
  if (candidates.length === 0)
    throw new BatonError(
      'KEY_UNKNOWN',
      `release ${manifest.releaseId} is signed with key ${signature.keyId}, which this agent does not trust; add its public key to the agent's trusted keys`,
    );
  const data = Buffer.from(canonicalJson(manifest));
  const sig = Buffer.from(signature.value, 'base64');
  if (!candidates.some((k) => verify(null, data, publicKeyObject(k.raw), sig)))
    throw new BatonError(
      'SIGNATURE_INVALID',
      `release ${manifest.releaseId}: the signature does not match the manifest (altered after signing, or signed with another key)`,
    );
  return manifest;
}

/** Streams the archive through sha256; its size and digest must be the manifest's. */
export async function verifyArchiveDigest(archivePath: string, manifest: Manifest): Promise<void> {
  const { sha256, size } = await hashFile(archivePath);
  if (size !== manifest.archive.size || sha256 !== manifest.archive.sha256)
    throw new BatonError(
      'DIGEST_MISMATCH',
      `${archivePath}: sha256 ${sha256} (${size} bytes), but the manifest says ${manifest.archive.sha256} (${manifest.archive.size} bytes); the archive was altered or truncated, upload it again`,
    );
}

/** Parses a signed manifest from untrusted JSON (text or already parsed); `source` names it in errors. */
export function parseSignedManifest(input: unknown, source: string): SignedManifest {
  let raw = input;
  if (typeof input === 'string') {
    if (Buffer.byteLength(input) > MAX_MANIFEST_BYTES)
      throw new BatonError(
        'MANIFEST_INVALID',
        `${source}: larger than ${MAX_MANIFEST_BYTES} bytes`,
      );
    try {
      raw = JSON.parse(input);
    } catch (err) {
      throw new BatonError('MANIFEST_INVALID', `${source}: not valid JSON: ${errorMessage(err)}`);
    }
  }
  const parsed = SignedManifestSchema.safeParse(raw);
  if (!parsed.success)
    throw new BatonError('MANIFEST_INVALID', `${source}: ${formatIssues(parsed.error)}`);
  return parsed.data;
}

/** The 32 raw bytes of `ed25519:<base64>`; KEY_INVALID for anything else. */
function rawPublicKey(text: string): Buffer {
  const trimmed = text.trim();
  const b64 = trimmed.startsWith(KEY_PREFIX) ? trimmed.slice(KEY_PREFIX.length) : undefined;
  if (b64 === undefined || !RAW_KEY.test(b64))
    throw new BatonError(
      'KEY_INVALID',
      `"${trimmed.slice(0, 80)}" is not a public key: expected ed25519:<base64 of 32 bytes>, as baton keygen writes it`,
    );
  return Buffer.from(b64, 'base64');
}

function publicKeyObject(raw: Buffer): KeyObject {
  try {
    return createPublicKey({
      key: { kty: 'OKP', crv: 'Ed25519', x: raw.toString('base64url') },
      format: 'jwk',
    });
  } catch (err) {
    throw new BatonError('KEY_INVALID', `not a usable ed25519 public key: ${errorMessage(err)}`);
  }
}

function publicKeyText(key: KeyObject): string {
  const { x } = key.export({ format: 'jwk' });
  if (typeof x !== 'string') throw new BatonError('KEY_INVALID', 'not an ed25519 public key');
  return KEY_PREFIX + Buffer.from(x, 'base64url').toString('base64');
}

function parsePrivateKey(pem: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPrivateKey(pem);
  } catch (err) {
    throw new BatonError(
      'KEY_INVALID',
      `the signing key is not a readable private key (PEM): ${errorMessage(err)}`,
    );
  }
  if (key.asymmetricKeyType !== 'ed25519')
    throw new BatonError(
      'KEY_INVALID',
      `the signing key is ${key.asymmetricKeyType ?? 'not asymmetric'}, not ed25519; make one with baton keygen`,
    );
  return key;
}
