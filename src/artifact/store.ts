import { randomBytes, createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { lstat, mkdir, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { z } from 'zod';
import { BatonError } from '../errors.js';
import { formatIssues } from '../supervisor/config.js';
import { ManifestSchema, SignatureSchema, type Manifest, type SignedManifest } from './manifest.js';
import { verifyArchiveDigest, verifyManifest } from './sign.js';
import { isUnpackTempDir, unpackRelease, type UnpackLimits } from './unpack.js';

/** What the store keeps beside each unpacked release. */
const ReleaseRecordSchema = z
  .object({
    manifest: ManifestSchema,
    signature: SignatureSchema.optional(),
    preparedAt: z.string(),
    failed: z
      .object({ at: z.string(), reason: z.string().max(2000) })
      .strict()
      .optional(),
  })
  .strict();
type ReleaseRecord = z.infer<typeof ReleaseRecordSchema>;

export interface StoreOptions {
  /** The app's folder in the agent's state directory. */
  root: string;
  app: string;
  /** Releases kept on disk, current and previous always among them. */
  keep: number;
  /** Public keys (`ed25519:<base64>`) whose signatures are accepted. */
  trustedKeys: readonly string[];
  /** Accept artifacts without a signature: only when the agent's config says so. */
  allowUnsigned: boolean;
  /** Largest archive accepted, in bytes. */
  maxArchiveBytes: number;
  limits?: Partial<UnpackLimits>;
}

/** Hears of each stage of an import as it ends, with its duration. */
export type StepReporter = (
  step: 'received' | 'verified' | 'unpacked',
  durationMs: number,
  detail: string,
) => void;

export interface StoredRelease {
  id: string;
  dir: string;
  manifest: Manifest;
}

export interface ReleaseInfo {
  id: string;
  digest: string;
  createdAt: string;
  gitSha: string | undefined;
  status: 'current' | 'previous' | 'failed' | 'kept';
  failedReason: string | undefined;
}

/**
 * An app's releases on the agent's disk. Archives are content-addressed (an archive the store
 * has is never uploaded again), verified before they are unpacked, and every step writes to a
 * temp path first and renames, so a failed or interrupted one leaves nothing behind.
 */
export class ReleaseStore {
  readonly artifacts: string;
  readonly releases: string;
  private readonly tmp: string;

  constructor(private readonly opts: StoreOptions) {
    this.artifacts = path.join(opts.root, 'artifacts');
    this.releases = path.join(opts.root, 'releases');
    this.tmp = path.join(opts.root, 'tmp');
  }

  /** Creates the folders and clears what an interrupted upload or unpack left in tmp/. */
  async init(): Promise<void> {
    await rm(this.tmp, { recursive: true, force: true });
    for (const dir of [this.artifacts, this.releases, this.tmp])
      await mkdir(dir, { recursive: true, mode: 0o755 });
    // An unpack killed halfway leaves its hidden temp dir beside the releases.
    for (const name of await readdir(this.releases))
      if (isUnpackTempDir(name))
        await rm(path.join(this.releases, name), { recursive: true, force: true });
  }

  private archivePath(sha256: string): string {
    return path.join(this.artifacts, `${sha256}.tar.gz`);
  }

  async hasArchive(sha256: string): Promise<boolean> {
    return (await stat(this.archivePath(sha256)).catch(() => undefined))?.isFile() ?? false;
  }

  /**
   * Takes an archive as a stream: hashes while writing a temp file, keeps it only when digest
   * and size match what the manifest promised. Backpressure end to end; nothing held in memory.
   */
  async receive(source: Readable, expected: { sha256: string; size: number }): Promise<void> {
    this.checkSize(expected.size);
    const tmp = path.join(this.tmp, `upload-${process.pid}-${randomBytes(6).toString('hex')}`);
    const hash = createHash('sha256');
    let size = 0;
    const limit = this.opts.maxArchiveBytes;
    const meter = new Transform({
      transform(chunk: Buffer, _enc, done) {
        size += chunk.length;
        if (size > Math.min(limit, expected.size))
          return done(
            new BatonError(
              'DIGEST_MISMATCH',
              `archive is longer than the ${expected.size} bytes its manifest says`,
            ),
          );
        hash.update(chunk);
        done(null, chunk);
      },
    });
    try {
      await pipeline(source, meter, createWriteStream(tmp, { mode: 0o644 }));
      const digest = hash.digest('hex');
      if (size !== expected.size || digest !== expected.sha256)
        throw new BatonError(
          'DIGEST_MISMATCH',
          `archive does not match its manifest (got sha256 ${digest.slice(0, 12)}…, ${size} bytes; expected ${expected.sha256.slice(0, 12)}…, ${expected.size} bytes); upload it again`,
        );
      await rename(tmp, this.archivePath(digest));
    } finally {
      await rm(tmp, { force: true });
    }
  }

  /**
   * Imports an archive file from this host's disk (a local deploy). Free when the store has it;
   * true when it was copied (and hashed) now.
   */
  async importFile(file: string, expected: { sha256: string; size: number }): Promise<boolean> {
    if (await this.hasArchive(expected.sha256)) return false;
    await this.receive(createReadStream(file), expected);
    return true;
  }

  /** Import and prepare as one step, never at the same time as a prune of this store. */
  add(file: string, signed: SignedManifest): Promise<StoredRelease> {
    return this.exclusive(async () => {
      const copied = await this.importFile(file, signed.manifest.archive);
      return this.prepare(signed, undefined, copied);
    });
  }

  /**
   * Import from a remote client and prepare, as one step. The signature is checked first, so an
   * untrusted artifact costs no upload; `source` is asked for the bytes only when the store lacks
   * the digest. `step` hears of each stage as it ends.
   */
  addFrom(
    signed: SignedManifest,
    source: (bytes: number) => Readable,
    step: StepReporter = () => undefined,
  ): Promise<StoredRelease & { uploadedBytes: number }> {
    return this.exclusive(async () => {
      this.checkManifest(signed);
      const { archive } = signed.manifest;
      // Refused before the client is asked for a byte.
      this.checkSize(archive.size);
      let uploadedBytes = 0;
      const started = Date.now();
      if (await this.hasArchive(archive.sha256)) {
        step('received', Date.now() - started, 'the host has this archive already: nothing sent');
      } else {
        await this.receive(source(archive.size), archive);
        uploadedBytes = archive.size;
        step('received', Date.now() - started, `${archive.size} bytes`);
      }
      return { ...(await this.prepare(signed, step, uploadedBytes > 0)), uploadedBytes };
    });
  }

  private queue: Promise<unknown> = Promise.resolve();

  /** Runs store changes one at a time, so a prune never removes what an import is writing. */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private checkSize(size: number): void {
    if (size > this.opts.maxArchiveBytes)
      throw new BatonError(
        'ARCHIVE_TOO_LARGE',
        `archive of ${size} bytes is over this agent's limit of ${this.opts.maxArchiveBytes}; raise maxArchiveBytes in the agent config`,
      );
  }

  /** Signature against the trusted keys, and the app it is for: cheap, so done before any upload. */
  checkManifest(signed: SignedManifest): Manifest {
    const manifest = verifyManifest(signed, [...this.opts.trustedKeys], {
      allowUnsigned: this.opts.allowUnsigned,
    });
    if (manifest.app !== this.opts.app)
      throw new BatonError(
        'MANIFEST_INVALID',
        `artifact is for app "${manifest.app}", not "${this.opts.app}"`,
      );
    return manifest;
  }

  /**
   * Verifies signature and digest, then unpacks into releases/<id>/. Idempotent: a release that
   * is already there with the same digest is returned as it is.
   */
  async prepare(
    signed: SignedManifest,
    step: StepReporter = () => undefined,
    /** The archive was hashed against the manifest as it arrived, in this same store step. */
    justReceived = false,
  ): Promise<StoredRelease> {
    const manifest = this.checkManifest(signed);
    const dir = path.join(this.releases, manifest.releaseId);
    const existing = await this.record(manifest.releaseId);
    if (existing) {
      if (existing.manifest.archive.sha256 !== manifest.archive.sha256)
        throw new BatonError(
          'RELEASE_EXISTS',
          `release ${manifest.releaseId} already exists with other contents; give the new build another release id`,
        );
      if (await stat(dir).catch(() => undefined)) {
        step('unpacked', 0, `${dir} (unpacked before)`);
        return { id: manifest.releaseId, dir, manifest };
      }
    }
    const archive = this.archivePath(manifest.archive.sha256);
    if (!(await this.hasArchive(manifest.archive.sha256)))
      throw new BatonError(
        'RELEASE_UNKNOWN',
        `the store has no archive ${manifest.archive.sha256}; upload it first`,
      );
    let started = Date.now();
    // A stored archive is hashed again (the disk may have changed it since); one that receive()
    // hashed a moment ago, under the same lock, is not read a second time.
    if (!justReceived) await verifyArchiveDigest(archive, manifest);
    step('verified', Date.now() - started, 'signature and sha256');
    started = Date.now();
    await rm(dir, { recursive: true, force: true });
    await unpackRelease(archive, dir, this.opts.limits);
    step('unpacked', Date.now() - started, dir);
    const record: ReleaseRecord = {
      manifest,
      signature: signed.signature,
      preparedAt: new Date().toISOString(),
    };
    await this.writeRecord(manifest.releaseId, record);
    return { id: manifest.releaseId, dir, manifest };
  }

  private recordPath(id: string): string {
    return path.join(this.releases, `${id}.json`);
  }

  private async record(id: string): Promise<ReleaseRecord | undefined> {
    const text = await readFile(this.recordPath(id), 'utf8').catch(() => undefined);
    if (text === undefined) return undefined;
    const parsed = ReleaseRecordSchema.safeParse(JSON.parse(text));
    if (!parsed.success)
      throw new BatonError(
        'MANIFEST_INVALID',
        `release record ${this.recordPath(id)} is damaged: ${formatIssues(parsed.error)}`,
      );
    return parsed.data;
  }

  private async writeRecord(id: string, record: ReleaseRecord): Promise<void> {
    const tmp = path.join(this.tmp, `record-${process.pid}-${randomBytes(6).toString('hex')}`);
    await writeFile(tmp, JSON.stringify(record, null, 2) + '\n');
    await rename(tmp, this.recordPath(id));
  }

  /** A release the store holds, for a rollback or a redeploy: no upload. */
  async get(id: string): Promise<StoredRelease> {
    const record = await this.record(id);
    const dir = path.join(this.releases, id);
    if (!record || !(await stat(dir).catch(() => undefined)))
      throw new BatonError(
        'RELEASE_UNKNOWN',
        `no release "${id}" on this host; see "baton releases" for what is kept`,
      );
    return { id, dir, manifest: record.manifest };
  }

  async markFailed(id: string, reason: string): Promise<void> {
    const record = await this.record(id);
    if (!record) return;
    record.failed = { at: new Date().toISOString(), reason: reason.slice(0, 2000) };
    await this.writeRecord(id, record);
  }

  /** Every release, newest first. */
  async list(current: string | undefined, previous: string | undefined): Promise<ReleaseInfo[]> {
    const names = (await readdir(this.releases).catch(() => [] as string[])).filter((n) =>
      n.endsWith('.json'),
    );
    const infos: ReleaseInfo[] = [];
    for (const name of names) {
      const id = name.slice(0, -'.json'.length);
      const record = await this.record(id);
      if (!record) continue;
      infos.push({
        id,
        digest: record.manifest.archive.sha256,
        createdAt: record.manifest.createdAt,
        gitSha: record.manifest.git?.sha,
        status:
          id === current
            ? 'current'
            : id === previous
              ? 'previous'
              : record.failed
                ? 'failed'
                : 'kept',
        failedReason: record.failed?.reason,
      });
    }
    return infos.sort((a, b) =>
      a.createdAt < b.createdAt ? 1 : a.createdAt > b.createdAt ? -1 : a.id < b.id ? 1 : -1,
    );
  }

  /** Keeps the newest `keep` releases, never current or previous; removes the rest and archives nobody uses. */
  prune(
    current: string | undefined,
    previous: string | undefined,
  ): Promise<{ removed: string[]; bytesFreed: number }> {
    return this.exclusive(() => this.pruneNow(current, previous));
  }

  private async pruneNow(
    current: string | undefined,
    previous: string | undefined,
  ): Promise<{ removed: string[]; bytesFreed: number }> {
    const all = await this.list(current, previous);
    const keepIds = new Set(all.slice(0, this.opts.keep).map((r) => r.id));
    if (current) keepIds.add(current);
    if (previous) keepIds.add(previous);
    const removed: string[] = [];
    let bytesFreed = 0;
    for (const r of all) {
      if (keepIds.has(r.id)) continue;
      bytesFreed += await du(path.join(this.releases, r.id));
      await rm(path.join(this.releases, r.id), { recursive: true, force: true });
      await rm(this.recordPath(r.id), { force: true });
      removed.push(r.id);
    }
    const used = new Set(all.filter((r) => keepIds.has(r.id)).map((r) => r.digest));
    for (const name of await readdir(this.artifacts)) {
      const digest = name.replace(/\.tar\.gz$/, '');
      if (used.has(digest)) continue;
      bytesFreed += (await stat(path.join(this.artifacts, name))).size;
      await rm(path.join(this.artifacts, name), { force: true });
    }
    return { removed, bytesFreed };
  }
}

/** Bytes in a folder (regular files; links counted as themselves, never followed). */
async function du(dir: string): Promise<number> {
  let total = 0;
  for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) total += await du(full);
    else total += (await lstat(full).catch(() => undefined))?.size ?? 0;
  }
  return total;
}
