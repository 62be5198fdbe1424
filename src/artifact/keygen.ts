import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { BatonError, errorMessage } from '../errors.js';
import { generateKeyPair } from './sign.js';

export interface KeygenResult {
  privateKeyFile: string;
  publicKeyFile: string;
  /** `ed25519:<base64>`: the line to add to each agent's trusted keys. */
  publicKey: string;
  keyId: string;
}

/**
 * Writes a new signing key pair into `outDir`: `<name>.key` (PKCS#8 PEM, mode 0600) and
 * `<name>.pub` (the public key line). Never overwrites: an existing key may be the one every
 * agent trusts.
 */
export async function keygen(outDir: string, name = 'baton'): Promise<KeygenResult> {
  const { privateKeyPem, publicKey, keyId } = generateKeyPair();
  await mkdir(outDir, { recursive: true, mode: 0o700 });
  const privateKeyFile = path.join(outDir, `${name}.key`);
  const publicKeyFile = path.join(outDir, `${name}.pub`);
  await create(privateKeyFile, privateKeyPem, 0o600);
  try {
    await create(publicKeyFile, `${publicKey}\n`, 0o644);
  } catch (err) {
    // Half a key pair is worse than none: the private key alone cannot be matched to a .pub.
    await rm(privateKeyFile, { force: true });
    throw err;
  }
  return { privateKeyFile, publicKeyFile, publicKey, keyId };
}

async function create(file: string, text: string, mode: number): Promise<void> {
  try {
    // 'wx': created with `mode` from the start, never an existing file rewritten.
    await writeFile(file, text, { flag: 'wx', mode });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST')
      throw new BatonError(
        'USAGE',
        `${file} already exists; remove it first or write the new key pair elsewhere`,
      );
    throw new BatonError('USAGE', `cannot write ${file}: ${errorMessage(err)}`);
  }
}
