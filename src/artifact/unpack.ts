import { randomBytes } from 'node:crypto';
import { chmod, lstat, mkdir, rename, rm, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { ReadEntry } from 'tar';
import { BatonError, errorMessage } from '../errors.js';
import { readArchive } from './archive-stream.js';
import { planEntry, refusal, type EntryPlan } from './entry-policy.js';
import { ReleaseTree } from './release-tree.js';
import { resolveLimits, type UnpackLimits } from './unpack-limits.js';

export { DEFAULT_UNPACK_LIMITS, type UnpackLimits } from './unpack-limits.js';

/**
 * Unpacks `archive` (a path to a .tar.gz) into `dest`, which must not exist yet. Unpacks into a
 * temp dir beside dest (same filesystem) and renames it to dest only when the whole archive
 * passed every check; on any refusal or error the temp dir is removed and nothing is left behind.
 *
 * Every entry is checked from its header before anything is written for it: absolute paths,
 * `..`, hard links, special files, setuid/setgid/sticky bits, symlinks that point out of the
 * release, anything written through a symlink, entries that replace others, and the limits.
 * Files get the archive's mode minus group/other write; ownership is never taken from the archive;
 * file mtimes are kept.
 *
 * `files` counts everything created (files, directories, implied parent directories, symlinks;
 * not the release root); `bytes` is regular-file content. Throws a BatonError with an
 * `ARCHIVE_*` code naming the entry, or `RELEASE_EXISTS`; errors of the host (a missing archive,
 * a full disk) come through as they are.
 */
export async function unpackRelease(
  archive: string,
  dest: string,
  limits?: Partial<UnpackLimits>,
): Promise<{ files: number; bytes: number }> {
  const resolved = resolveLimits(limits);
  const target = path.resolve(dest);
  await refuseExisting(target);
  await mkdir(path.dirname(target), { recursive: true });
  const staging = path.join(
    path.dirname(target),
    `.${path.basename(target)}${STAGING_MARK}${randomBytes(6).toString('hex')}`,
  );
  // Private while half made; opened up just before it becomes the release.
  await mkdir(staging, { mode: 0o700 });
  try {
    const counts = await unpackInto(archive, staging, resolved);
    await chmod(staging, 0o755);
    await rename(staging, target).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'EEXIST' || err.code === 'ENOTEMPTY') throw releaseExists(target);
      throw err;
    });
    return counts;
  } catch (err) {
    await rm(staging, { recursive: true, force: true });
    throw err;
  }
}

const STAGING_MARK = '.unpacking-';

/**
 * Whether a directory name is an unpack's temp dir (`.<dest name>.unpacking-<random>`, beside
 * dest): hidden, so a listing of releases never shows one half made. Only a process killed
 * mid-unpack leaves one; whoever owns the releases folder may delete them at startup.
 */
export function isUnpackTempDir(name: string): boolean {
  return name.startsWith('.') && name.includes(STAGING_MARK);
}

async function unpackInto(
  archive: string,
  root: string,
  limits: UnpackLimits,
): Promise<{ files: number; bytes: number }> {
  const tree = new ReleaseTree(root, limits.maxFiles);
  const budget = { declared: 0, written: 0, max: limits.maxBytes };
  await readArchive(archive, limits.maxRatio, async (entry, signal) => {
    const plan = planEntry(entry);
    if (plan.kind === 'file' && budget.declared + plan.size > budget.max)
      throw refusal(
        'ARCHIVE_TOO_LARGE',
        plan.name,
        `declares ${plan.size} bytes, taking the release over its ${budget.max}-byte limit`,
      );
    const { missing, isNew } = tree.reserve(plan);
    if (plan.kind === 'file') budget.declared += plan.size;
    // Checks done; from here on, writes.
    await tree.parents(plan, missing);
    if (plan.kind === 'directory') await tree.directory(plan, isNew);
    if (plan.kind === 'symlink') await tree.symlink(plan);
    if (plan.kind !== 'file') return drain(entry, signal, () => bodyOnNonFile(plan));

    const file = await tree.openFile(plan);
    try {
      let received = 0;
      await drain(entry, signal, async (chunk) => {
        received += chunk.length;
        budget.written += chunk.length;
        // The Parser bounds a body by the size it read; counting here keeps that a second layer.
        if (received > plan.size || budget.written > budget.max)
          throw refusal(
            'ARCHIVE_TOO_LARGE',
            plan.name,
            `carries more data than its header declares or the ${budget.max}-byte limit allows`,
          );
        await writeAll(file, chunk);
      });
      if (received !== plan.size)
        throw refusal(
          'ARCHIVE_CORRUPT',
          plan.name,
          `ends after ${received} of its ${plan.size} bytes; the archive is truncated`,
        );
      await tree.finishFile(plan, file);
    } finally {
      await file.close();
    }
  });
  return { files: tree.count, bytes: budget.written };
}

/**
 * Feeds an entry's data to `onChunk` one chunk at a time, pausing the entry (and so, through the
 * Parser, the whole pipeline) until each is handled. Resolves at the entry's end.
 */
function drain(
  entry: ReadEntry,
  signal: AbortSignal,
  onChunk: (chunk: Buffer) => Promise<void>,
): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let settled = false;
    let pending: Promise<void> = Promise.resolve();
    const settle = (err?: unknown) => {
      if (settled) return;
      settled = true;
      signal.removeEventListener('abort', onAbort);
      entry.pause();
      if (err === undefined) resolve();
      else reject(err instanceof Error ? err : new Error(errorMessage(err)));
    };
    const onAbort = () => settle(signal.reason);
    if (signal.aborted) return onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    // 'end' and 'error' first: adding a 'data' listener resumes the entry, which may end at once.
    entry.once('end', () => void pending.then(() => settle(), settle));
    entry.once('error', settle);
    entry.on('data', (chunk: Buffer) => {
      entry.pause();
      pending = onChunk(chunk).then(() => {
        if (!settled) entry.resume();
      });
      pending.catch(settle);
    });
  });
}

async function writeAll(file: FileHandle, chunk: Buffer): Promise<void> {
  for (let offset = 0; offset < chunk.length;) {
    const { bytesWritten } = await file.write(chunk, offset, chunk.length - offset);
    offset += bytesWritten;
  }
}

function bodyOnNonFile(plan: EntryPlan): Promise<void> {
  return Promise.reject(refusal('ARCHIVE_CORRUPT', plan.name, `is a ${plan.kind} but has data`));
}

async function refuseExisting(target: string): Promise<void> {
  try {
    await lstat(target);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  throw releaseExists(target);
}

function releaseExists(target: string): BatonError {
  return new BatonError(
    'RELEASE_EXISTS',
    `${target} already exists; unpack each release into a new directory`,
  );
}
