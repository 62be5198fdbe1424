import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { keygen } from '../artifact/keygen.js';
import { packRelease, type PackedRelease, type PackOptions } from '../deploy/prepare-artifact.js';
import { BatonError, errorMessage } from '../errors.js';
import { makeToken } from '../transport/auth.js';
import type { Output } from './agent-commands.js';

/** `baton agent token`: a fresh channel token, written 0600 (never over an existing file) or printed. */
export async function tokenCommand(file: string | undefined, out: Output): Promise<void> {
  const token = makeToken();
  if (file === undefined) return out.line(token);
  try {
    await writeFile(file, token + '\n', { mode: 0o600, flag: 'wx' });
  } catch (err) {
    throw new BatonError(
      'USAGE',
      `cannot write ${file}: ${errorMessage(err)} (an existing token is never overwritten)`,
    );
  }
  out.line(
    `token written to ${file}; set channel.tokenFile: ${path.resolve(file)} in the agent's config and give clients the same token (a repository secret)`,
  );
}

export async function keygenCommand(outDir: string, out: Output): Promise<void> {
  const r = await keygen(outDir);
  out.line(
    `private key: ${r.privateKeyFile} (keep it secret: a repository secret, never in the repo)`,
  );
  out.line(`public key:  ${r.publicKeyFile}`);
  out.line(`add to each agent's config under trustedKeys:\n  - ${r.publicKey}`);
}

/**
 * `baton pack`: a directory (or a ready .tar.gz) becomes `<out>/<release>.tar.gz` and its signed
 * `<release>.manifest.json`, and says so.
 */
export async function packCommand(
  input: string,
  opts: PackOptions,
  out: Output,
  env: NodeJS.ProcessEnv = process.env,
): Promise<PackedRelease> {
  const packed = await packRelease(input, opts, env);
  printPacked(packed, opts.app, out);
  return packed;
}

/** What `baton pack` (and `baton deploy` of a directory) prints of a packed release. */
export function printPacked(packed: PackedRelease, app: string, out: Output): void {
  const { archive, manifestFile, manifest } = packed;
  out.line(
    `packed ${app} release ${manifest.releaseId}: ${packed.entries} entries, ${packed.size} bytes, sha256 ${packed.sha256}`,
  );
  out.line(
    `  ${archive}\n  ${manifestFile}${packed.signed ? '' : '\n  UNSIGNED: agents refuse it unless their config sets allowUnsigned: true'}`,
  );
}
