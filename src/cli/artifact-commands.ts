import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { keygen } from '../artifact/keygen.js';
import type { Manifest } from '../artifact/manifest.js';
import { packInput } from '../artifact/pack.js';
import { buildManifest, makeReleaseId } from '../artifact/release-id.js';
import { signManifest } from '../artifact/sign.js';
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

/** What the build environment says about the run (GitHub Actions variables), when it does. */
function provenance(
  env: NodeJS.ProcessEnv,
  gitSha: string | undefined,
): Pick<Manifest, 'git' | 'run'> {
  const sha = gitSha ?? env.GITHUB_SHA;
  const git =
    sha || env.GITHUB_REF
      ? { ...(sha && { sha: sha.toLowerCase() }), ...(env.GITHUB_REF && { ref: env.GITHUB_REF }) }
      : undefined;
  const run = env.GITHUB_RUN_ID
    ? {
        ...(env.GITHUB_REPOSITORY && { repository: env.GITHUB_REPOSITORY }),
        id: env.GITHUB_RUN_ID,
        ...(env.GITHUB_RUN_ATTEMPT && { attempt: env.GITHUB_RUN_ATTEMPT }),
        ...(env.GITHUB_ACTOR && { actor: env.GITHUB_ACTOR }),
      }
    : undefined;
  return { ...(git && { git }), ...(run && { run }) };
}

async function signingKey(
  file: string | undefined,
  env: NodeJS.ProcessEnv,
): Promise<string | undefined> {
  if (file !== undefined) {
    try {
      return await readFile(file, 'utf8');
    } catch (err) {
      throw new BatonError('KEY_INVALID', `cannot read signing key ${file}: ${errorMessage(err)}`);
    }
  }
  return env.BATON_SIGNING_KEY || undefined;
}

/**
 * `baton pack`: a directory (or a ready .tar.gz) becomes `<out>/<release>.tar.gz` and its signed
 * `<release>.manifest.json`. A bad baton.yml fails here, before anything is sent anywhere.
 */
export async function packCommand(
  input: string,
  opts: {
    app: string;
    out: string;
    key: string | undefined;
    releaseId: string | undefined;
    gitSha: string | undefined;
  },
  out: Output,
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ archive: string; manifestFile: string; manifest: Manifest }> {
  const key = await signingKey(opts.key, env);
  await mkdir(opts.out, { recursive: true });
  const tmp = path.join(opts.out, `.pack-${process.pid}.tar.gz`);
  try {
    const packed = await packInput(input, tmp);
    const meta = provenance(env, opts.gitSha);
    const now = new Date();
    const releaseId =
      opts.releaseId ?? makeReleaseId(now, meta.git?.sha?.slice(0, 7), packed.sha256);
    const manifest = buildManifest({
      app: opts.app,
      releaseId,
      archive: { sha256: packed.sha256, size: packed.size, entries: packed.entries },
      ...meta,
      now,
    });
    const signed = key ? signManifest(manifest, key) : { manifest };
    const archive = path.join(opts.out, `${releaseId}.tar.gz`);
    const manifestFile = path.join(opts.out, `${releaseId}.manifest.json`);
    await rename(tmp, archive);
    await writeFile(manifestFile, JSON.stringify(signed, null, 2) + '\n');
    out.line(
      `packed ${opts.app} release ${releaseId}: ${packed.entries} entries, ${packed.size} bytes, sha256 ${packed.sha256}`,
    );
    out.line(
      `  ${archive}\n  ${manifestFile}${key ? '' : '\n  UNSIGNED: agents refuse it unless their config sets allowUnsigned: true'}`,
    );
    return { archive, manifestFile, manifest };
  } finally {
    await rm(tmp, { force: true });
  }
}
