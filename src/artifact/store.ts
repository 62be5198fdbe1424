import { lstat, mkdir, readdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { BatonError, errorCode, errorMessage, type ErrorCode } from '../errors.js';
import {
  canonicalJson,
  ReleaseIdSchema,
  type Manifest,
  type SignedManifest,
} from '../protocol/manifest.js';
import { ArchiveCache } from './archive-cache.js';
import { checkStorableReleaseId } from './release-id.js';
import {
  ReleaseRecords,
  releaseFileName,
  unknownRelease,
  type ReleaseRecord,
} from './release-records.js';
import { verifyArchiveDigest, verifyManifest } from './sign.js';
import { isUnpackTempDir, unpackRelease, type UnpackLimits } from './unpack.js';
import type { ReleaseInfo } from '../protocol/results.js';

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

/** Asks for a release the store holds. */
export interface GetOptions {
  /** Take a release marked failed all the same. Never skips the signature check. */
  force?: boolean;
}

/**
 * An app's releases on the agent's disk. Archives are content-addressed (an archive the store
 * has is never uploaded again), verified before they are unpacked, and every step writes to a
 * temp path first and renames, so a failed or interrupted one leaves nothing behind.
 */
export class ReleaseStore {
  readonly artifacts: string;
  readonly releases: string;
  private readonly archives: ArchiveCache;
  /**
   * One JSON file per release, apart from the release folders: an id can never name both a
   * release and another release's record (an id `X.json` once turned X's record into a folder).
   */
  private readonly records: ReleaseRecords;
  private readonly tmp: string;

  constructor(private readonly opts: StoreOptions) {
    this.artifacts = path.join(opts.root, 'artifacts');
    this.releases = path.join(opts.root, 'releases');
    this.tmp = path.join(opts.root, 'tmp');
    this.records = new ReleaseRecords(path.join(opts.root, 'records'), this.tmp);
    this.archives = new ArchiveCache(this.artifacts, this.tmp, opts.maxArchiveBytes);
  }

  /**
   * Creates the folders, moves records from where older stores kept them, and clears what an
   * interrupted upload or unpack left in tmp/.
   */
  async init(): Promise<void> {
    await rm(this.tmp, { recursive: true, force: true });
    for (const dir of [this.artifacts, this.releases, this.tmp])
      await mkdir(dir, { recursive: true, mode: 0o755 });
    await this.records.init(this.releases);
    // An unpack killed halfway leaves its hidden temp dir beside the releases.
    for (const name of await readdir(this.releases))
      if (isUnpackTempDir(name))
        await rm(path.join(this.releases, name), { recursive: true, force: true });
  }

  private releaseDir(id: string): string {
    return path.join(this.releases, releaseFileName(id));
  }

  /** Whether `dir` lies in this store's releases folder. */
  holds(dir: string): boolean {
    const rel = path.relative(this.releases, path.resolve(dir));
    return rel === '' || (rel.split(path.sep)[0] !== '..' && !path.isAbsolute(rel));
  }

  async hasArchive(sha256: string): Promise<boolean> {
    return this.archives.has(sha256);
  }

  /** Takes an archive as a stream; see {@link ArchiveCache.receive}. */
  receive(source: Readable, expected: { sha256: string; size: number }): Promise<void> {
    return this.archives.receive(source, expected);
  }

  /** Import and prepare as one step, never at the same time as a prune of this store. */
  add(file: string, signed: SignedManifest): Promise<StoredRelease> {
    return this.exclusive(async () => {
      checkStorableReleaseId(signed.manifest.releaseId);
      const copied = await this.archives.importFile(file, signed.manifest.archive);
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
      checkStorableReleaseId(signed.manifest.releaseId);
      const { archive } = signed.manifest;
      // Refused before the client is asked for a byte.
      this.archives.checkSize(archive.size);
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
    checkStorableReleaseId(manifest.releaseId);
    const dir = this.releaseDir(manifest.releaseId);
    const existing = await this.records.read(manifest.releaseId);
    if (existing) {
      if (existing.manifest.archive.sha256 !== manifest.archive.sha256)
        throw new BatonError(
          'RELEASE_EXISTS',
          `release ${manifest.releaseId} already exists with other contents; give the new build another release id`,
        );
      if (await stat(dir).catch(() => undefined)) {
        // Signed again (say with a new key, the old one revoked): the record keeps the
        // signature that verifies now, so the release can be rolled back to later.
        if (
          signed.signature &&
          canonicalJson({ m: existing.manifest, s: existing.signature }) !==
            canonicalJson({ m: manifest, s: signed.signature })
        )
          await this.records.write(manifest.releaseId, {
            ...existing,
            manifest,
            signature: signed.signature,
          });
        step('unpacked', 0, `${dir} (unpacked before)`);
        return { id: manifest.releaseId, dir, manifest };
      }
    }
    const archive = this.archives.path(manifest.archive.sha256);
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
    await this.records.write(manifest.releaseId, record);
    return { id: manifest.releaseId, dir, manifest };
  }

  /**
   * A release the store holds, to switch to again (a rollback, a redeploy by name): no upload.
   * Checked at every use against the agent's config as it is now, not as it was when the
   * release came: its stored signature must verify with a key still trusted (a key removed
   * from trustedKeys revokes what it signed), and a release marked failed is refused unless
   * `force`, which never skips the signature.
   */
  async get(id: string, opts: GetOptions = {}): Promise<StoredRelease> {
    if (!ReleaseIdSchema.safeParse(id).success) throw unknownRelease(id);
    const record = await this.records.read(id);
    const dir = this.releaseDir(id);
    if (!record || !(await stat(dir).catch(() => undefined))?.isDirectory())
      throw unknownRelease(id);
    const distrust = this.distrust(record);
    if (distrust)
      throw new BatonError(
        distrust.code,
        `release ${id} is ${distrust.reason}: it stays on disk but is not switched to again. Deploy a build signed with a key the agent trusts (this one, signed again, uploads nothing: the host has its archive)${distrust.code === 'KEY_REVOKED' ? ', or put the key back in trustedKeys and restart the agent if removing it was a mistake' : ''}`,
      );
    if (record.failed && opts.force !== true)
      throw new BatonError(
        'RELEASE_FAILED',
        `release ${id} was marked failed at ${record.failed.at}: ${record.failed.reason}; deploy a fixed build, or pass --force to roll back to it anyway`,
      );
    return { id, dir, manifest: record.manifest };
  }

  /**
   * Why a stored release is not trusted now, or undefined: its stored signature checked
   * against the keys the agent trusts now (and whether it still allows unsigned ones).
   */
  private distrust(record: ReleaseRecord): { code: ErrorCode; reason: string } | undefined {
    try {
      this.checkManifest({
        manifest: record.manifest,
        ...(record.signature && { signature: record.signature }),
      });
      return undefined;
    } catch (err) {
      const code = errorCode(err);
      if (code === 'KEY_UNKNOWN')
        return {
          code: 'KEY_REVOKED',
          reason: `signed with key ${record.signature?.keyId}, which is no longer in trustedKeys`,
        };
      if (code === 'SIGNATURE_MISSING')
        return { code, reason: 'unsigned, and this agent no longer allows unsigned artifacts' };
      return {
        code: err instanceof BatonError ? err.code : 'SIGNATURE_INVALID',
        reason: errorMessage(err),
      };
    }
  }

  markFailed(id: string, reason: string): Promise<void> {
    return this.exclusive(async () => {
      const record = await this.records.read(id);
      if (!record) return;
      record.failed = { at: new Date().toISOString(), reason: reason.slice(0, 2000) };
      await this.records.write(id, record);
    });
  }

  /** A release that served after all (a forced rollback, a retried deploy) is failed no more. */
  markServed(id: string): Promise<void> {
    return this.exclusive(async () => {
      const record = await this.records.read(id);
      if (!record?.failed) return;
      delete record.failed;
      await this.records.write(id, record);
    });
  }

  /** Every release, newest first. */
  async list(current: string | undefined, previous: string | undefined): Promise<ReleaseInfo[]> {
    const ids = await this.records.ids();
    const infos: ReleaseInfo[] = [];
    for (const id of ids) {
      const record = await this.records.read(id);
      if (!record) continue;
      const untrustedReason = this.distrust(record)?.reason;
      infos.push({
        id,
        digest: record.manifest.archive.sha256,
        createdAt: record.manifest.createdAt,
        gitSha: record.manifest.git?.sha,
        status:
          id === current
            ? 'current'
            : untrustedReason !== undefined
              ? 'untrusted'
              : id === previous
                ? 'previous'
                : record.failed
                  ? 'failed'
                  : 'kept',
        failedReason: record.failed?.reason,
        untrustedReason,
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
      bytesFreed += await du(this.releaseDir(r.id));
      await rm(this.releaseDir(r.id), { recursive: true, force: true });
      await this.records.remove(r.id);
      removed.push(r.id);
    }
    // A release folder with no record is nothing the store can deploy: left by a store that an
    // id ending in .json damaged under the old layout, or put there by hand. Gone too, unless
    // the state still names it (what runs is never touched).
    const recorded = new Set(all.map((r) => r.id));
    for (const name of await readdir(this.releases)) {
      if (recorded.has(name) || keepIds.has(name) || isUnpackTempDir(name)) continue;
      if (!ReleaseIdSchema.safeParse(name).success) continue;
      const dir = this.releaseDir(name);
      if (!(await lstat(dir).catch(() => undefined))?.isDirectory()) continue;
      bytesFreed += await du(dir);
      await rm(dir, { recursive: true, force: true });
      removed.push(name);
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
