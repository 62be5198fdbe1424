// The artifact bench/transfer.ts sends: a baton.yml and one file of incompressible bytes,
// packed fast (gzip level 0: stored blocks) and signed for one agent's key.
import { createHash, randomFillSync } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, open, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { ZlibOptions } from 'node:zlib';
import { Pack } from 'tar';
import type { SignedManifest } from '../src/protocol/manifest.js';
import { buildManifest, makeReleaseId } from '../src/artifact/release-id.js';
import { parseSignedManifest, signManifest } from '../src/artifact/sign.js';
import { FIXTURES } from '../support/paths.js';

const MiB = 1024 * 1024;
// Level 0 (stored blocks) packs at ~270 MiB/s here, level 1 at ~40 (it still tries on random
// bytes), `baton pack` (level 6) at ~30: 1 GiB would cost half a minute of setup at anything else.
/**
 * Handed to node:zlib as is. Its default output chunk is 16 KiB; 1 MiB makes level 0 about 1.6x
 * faster. A ZlibOptions variable: node-tar's own type leaves chunkSize out.
 */
const GZIP: ZlibOptions = { level: 0, chunkSize: MiB };

export interface Artifact {
  archive: string;
  sha256: string;
  size: number;
  entries: number;
  /** Bytes of the random file inside. */
  payload: number;
  /** Generating and packing, in ms. */
  ms: number;
}

/**
 * Writes `payload` bytes of crypto-random data (1 MiB at a time, one buffer reused) and a
 * baton.yml running the fixture app under `dir`, then packs them into `dir/artifact.tar.gz`,
 * hashed on the way.
 */
export async function makeArtifact(dir: string, payload: number): Promise<Artifact> {
  const t0 = performance.now();
  const tree = path.join(dir, 'tree');
  await mkdir(tree, { recursive: true });
  await writeFile(
    path.join(tree, 'baton.yml'),
    `command: [node, ${JSON.stringify(path.join(FIXTURES, 'app.mjs'))}]\n`,
  );
  const handle = await open(path.join(tree, 'payload.bin'), 'wx');
  try {
    const chunk = Buffer.alloc(MiB);
    for (let left = payload; left > 0;) {
      const n = Math.min(left, MiB);
      await handle.write(randomFillSync(chunk, 0, n), 0, n);
      left -= n;
    }
  } finally {
    await handle.close();
  }
  const archive = path.join(dir, 'artifact.tar.gz');
  const packer = new Pack({
    cwd: tree,
    gzip: GZIP,
    portable: true,
    maxReadSize: MiB,
  });
  packer.add('baton.yml');
  packer.add('payload.bin');
  packer.end();
  const hash = createHash('sha256');
  let size = 0;
  await pipeline(
    packer,
    async function* (chunks: AsyncIterable<Buffer>) {
      for await (const chunk of chunks) {
        hash.update(chunk);
        size += chunk.length;
        yield chunk;
      }
    },
    createWriteStream(archive, { flags: 'wx' }),
  );
  return {
    archive,
    sha256: hash.digest('hex'),
    size,
    entries: 2,
    payload,
    ms: performance.now() - t0,
  };
}

/** The artifact's manifest for app `web`, signed with the PEM key in `keyFile`. */
export async function signedManifest(artifact: Artifact, keyFile: string): Promise<SignedManifest> {
  const now = new Date();
  const manifest = buildManifest({
    app: 'web',
    releaseId: makeReleaseId(now, undefined, artifact.sha256),
    archive: { sha256: artifact.sha256, size: artifact.size, entries: artifact.entries },
    now,
  });
  const signed = signManifest(manifest, await readFile(keyFile, 'utf8'));
  // Through the same parser the CLI reads a manifest file with: what the agent gets is checked.
  return parseSignedManifest(JSON.stringify(signed), 'bench manifest');
}
