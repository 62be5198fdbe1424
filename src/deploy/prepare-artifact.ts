import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { packInput } from '../artifact/pack.js';
import { buildManifest, makeReleaseId } from '../artifact/release-id.js';
import { parseSignedManifest, signManifest } from '../artifact/sign.js';
import { BatonError, errorMessage } from '../errors.js';
import type { Manifest, SignedManifest } from '../protocol/manifest.js';

/** What to pack: the app, the release id (else made from the commit and digest), the signing key. */
export interface PackOptions {
  app: string;
  /** Where the archive and its manifest are written. */
  out: string;
  /** File of the ed25519 signing key; else `$BATON_SIGNING_KEY`; else unsigned. */
  key: string | undefined;
  releaseId: string | undefined;
  gitSha: string | undefined;
}

/** A release packed and signed: its archive, its manifest file, and what it says. */
export interface PackedRelease {
  archive: string;
  manifestFile: string;
  manifest: Manifest;
  signed: boolean;
  entries: number;
  size: number;
  sha256: string;
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
 * A directory (or a ready .tar.gz) becomes `<out>/<release>.tar.gz` and its signed
 * `<release>.manifest.json`. A bad baton.yml fails here, before anything is sent anywhere.
 */
export async function packRelease(
  input: string,
  opts: PackOptions,
  env: NodeJS.ProcessEnv = process.env,
): Promise<PackedRelease> {
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
    return {
      archive,
      manifestFile,
      manifest,
      signed: key !== undefined,
      entries: packed.entries,
      size: packed.size,
      sha256: packed.sha256,
    };
  } finally {
    await rm(tmp, { force: true });
  }
}

/** An artifact ready to send to a host: the archive, its signed manifest, what to remove after. */
export interface PreparedArtifact {
  archive: string;
  signed: SignedManifest;
  cleanup: () => Promise<void>;
}

/**
 * What one deploy sends: an archive with the manifest beside it (or named) as it is; a
 * directory packed and signed into a temp dir first (`onPacked` hears of it).
 */
export async function prepareArtifact(
  input: string,
  opts: { app: string; key?: string; manifest?: string; releaseId?: string; gitSha?: string },
  env: NodeJS.ProcessEnv = process.env,
  onPacked: (packed: PackedRelease) => void = () => undefined,
): Promise<PreparedArtifact> {
  const manifestFile = opts.manifest ?? input.replace(/\.(tar\.gz|tgz)$/, '.manifest.json');
  if (/\.(tar\.gz|tgz)$/.test(input) && existsSync(manifestFile)) {
    const text = await readFile(manifestFile, 'utf8').catch((err: unknown) => {
      throw new BatonError('MANIFEST_INVALID', `cannot read ${manifestFile}: ${errorMessage(err)}`);
    });
    return {
      archive: input,
      signed: parseSignedManifest(text, manifestFile),
      cleanup: async () => {},
    };
  }
  const dir = await mkdtemp(path.join(os.tmpdir(), 'baton-deploy-'));
  try {
    const packed = await packRelease(
      input,
      { app: opts.app, out: dir, key: opts.key, releaseId: opts.releaseId, gitSha: opts.gitSha },
      env,
    );
    onPacked(packed);
    const text = await readFile(packed.manifestFile, 'utf8');
    return {
      archive: packed.archive,
      signed: parseSignedManifest(text, packed.manifestFile),
      cleanup: () => rm(dir, { recursive: true, force: true }),
    };
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}
