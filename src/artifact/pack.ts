import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, type Stats } from 'node:fs';
import { lstat, open, readdir, readlink, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { list, Pack, type ReadEntry } from 'tar';
import { IGNORE_FILE, ignored, loadIgnoreRules, type IgnoreRule } from './ignore.js';
import { BatonError, errorMessage } from '../errors.js';
import {
  APP_CONFIG_FILE,
  MAX_APP_CONFIG_BYTES,
  parseAppDeployConfig,
  readAppDeployConfig,
  type AppDeployConfig,
} from './app-config.js';

export interface PackOptions {
  /** Extra ignore patterns, added to `DEFAULT_IGNORE` and the root's `.batonignore`. */
  ignore?: string[];
}

export interface PackResult {
  /** sha256 of the .tar.gz bytes, lowercase hex. */
  sha256: string;
  /** Bytes of the .tar.gz. */
  size: number;
  /** Regular files, directories and symlinks in the archive. */
  entries: number;
  /** The validated `baton.yml` at the archive's root, when there is one. */
  config: AppDeployConfig | undefined;
}

/** Every entry gets this mtime, so the archive depends on content alone. */
const FIXED_MTIME = new Date(0);
/** gzip's default, as `tar czf` uses: part of what makes the bytes reproducible. */
const GZIP_LEVEL = 6;
/**
 * Read size while packing and listing. node-tar allocates a new buffer per read, and V8 frees
 * dead buffers only after tens of MiB of them: smaller reads keep that garbage, and the peak RSS,
 * lower (measured with bench/pack.ts: ~120 MiB at 128 KiB, ~140 at 1 MiB), at no cost in speed.
 */
const CHUNK = 128 * 1024;
/** hashFile reads through one buffer it reuses, so this size costs no garbage. */
const HASH_BUFFER = 1024 * 1024;

/**
 * Packs `dir` into a gzip'd tar at `outFile`, streamed and hashed on the way, never held in
 * memory. Reproducible: the same content gives the same bytes (with the same Node.js, whose zlib
 * does the compressing) whatever the mtimes, owners, umask or creation order: entries are sorted,
 * mtimes fixed, owners left out (`portable`), the gzip header's mtime is 0 and its OS byte fixed.
 * A `baton.yml` at the root is validated first, so a bad one fails before anything is written.
 */
export async function packDirectory(
  dir: string,
  outFile: string,
  opts: PackOptions = {},
): Promise<PackResult> {
  const root = path.resolve(dir);
  const config = await readAppDeployConfig(root);
  const rules = await loadIgnoreRules(root, opts.ignore ?? []);
  const statCache = new Map<string, Stats>();
  const entries = await walk(root, rules, path.resolve(outFile), statCache);
  if (entries.length === 0)
    throw new BatonError('USAGE', `${root}: nothing to pack (empty, or everything is ignored)`);

  const packer = new Pack({
    cwd: root,
    gzip: { level: GZIP_LEVEL },
    portable: true,
    mtime: FIXED_MTIME,
    noDirRecurse: true,
    strict: true,
    statCache,
    linkCache: new ForgetfulMap<LinkCacheKey, string>(),
    maxReadSize: CHUNK,
  });
  let packError: unknown;
  // Recorded here so an early error never goes unheard; the pipeline below rethrows it.
  packer.on('error', (err) => (packError ??= err));
  // Pack.add, not tar.c: tar.c reads a path starting with '@' as an archive to merge.
  for (const entry of entries) packer.add(entry);
  packer.end();
  const result = await writeHashed(packer, outFile);
  if (packError !== undefined) throw packError as Error;
  return { ...result, entries: entries.length, config };
}

/** Streaming sha256 and size of a file, through one reused buffer: memory stays flat. */
export async function hashFile(file: string): Promise<{ sha256: string; size: number }> {
  const hash = createHash('sha256');
  const buffer = Buffer.allocUnsafe(HASH_BUFFER);
  let size = 0;
  const handle = await open(file, 'r');
  try {
    for (;;) {
      const { bytesRead } = await handle.read(buffer, 0, HASH_BUFFER, null);
      if (bytesRead === 0) break;
      hash.update(buffer.subarray(0, bytesRead));
      size += bytesRead;
    }
  } finally {
    await handle.close();
  }
  return { sha256: hash.digest('hex'), size };
}

/**
 * A directory is packed; a ready .tar.gz/.tgz is copied to `outFile` as it is, hashed on the
 * way, then listed (streaming) to count its entries and validate its `baton.yml`.
 */
export async function packInput(
  input: string,
  outFile: string,
  opts: PackOptions = {},
): Promise<PackResult> {
  const info = await stat(input);
  if (info.isDirectory()) return packDirectory(input, outFile, opts);
  if (!info.isFile() || !/\.(tar\.gz|tgz)$/.test(input))
    throw new BatonError('USAGE', `${input}: pack a directory or a .tar.gz/.tgz archive`);
  let result: { sha256: string; size: number };
  if (path.resolve(input) === path.resolve(outFile)) result = await hashFile(outFile);
  else
    result = await writeHashed(
      createReadStream(input, { highWaterMark: CHUNK }) as AsyncIterable<Buffer>,
      outFile,
    );
  try {
    return { ...result, ...(await listArchive(outFile)) };
  } catch (err) {
    if (path.resolve(input) !== path.resolve(outFile)) await rm(outFile, { force: true });
    throw err;
  }
}

/** Streams `source` into `outFile` through a hash; the file appears only once complete. */
async function writeHashed(
  source: AsyncIterable<Buffer>,
  outFile: string,
): Promise<{ sha256: string; size: number }> {
  const hash = createHash('sha256');
  let size = 0;
  const partial = `${outFile}.partial-${process.pid}`;
  try {
    await pipeline(
      source,
      async function* (chunks: AsyncIterable<Buffer>) {
        for await (const chunk of chunks) {
          hash.update(chunk);
          size += chunk.length;
          yield chunk;
        }
      },
      createWriteStream(partial, { flags: 'wx', mode: 0o644 }),
    );
    await rename(partial, outFile);
  } catch (err) {
    await rm(partial, { force: true });
    throw err;
  }
  return { sha256: hash.digest('hex'), size };
}

const COUNTED = new Set(['File', 'OldFile', 'ContiguousFile', 'Directory', 'SymbolicLink']);

/** Counts an archive's entries and reads its root `baton.yml`, refusing what the agent would. */
async function listArchive(
  file: string,
): Promise<{ entries: number; config: AppDeployConfig | undefined }> {
  const source = `${file}: ${APP_CONFIG_FILE}`;
  if (!(await isGzip(file)))
    throw new BatonError('ARCHIVE_CORRUPT', `${file}: not gzip-compressed; give a .tar.gz`);
  let entries = 0;
  let refused: BatonError | undefined;
  let configChunks: Buffer[] | undefined;
  // Runs inside the parser's stream handlers: record, never throw, and report once listed.
  const onReadEntry = (entry: ReadEntry) => {
    if (!COUNTED.has(entry.type)) {
      refused ??= new BatonError(
        entry.type === 'Link' ? 'ARCHIVE_HARDLINK' : 'ARCHIVE_SPECIAL_FILE',
        `${file}: ${entry.path} is a ${entry.type} entry; the agent accepts only files, directories and symlinks`,
      );
      return;
    }
    entries++;
    if (entry.type === 'SymbolicLink' || entry.path.replace(/^\.\//, '') !== APP_CONFIG_FILE)
      return;
    if (entry.size > MAX_APP_CONFIG_BYTES) {
      refused ??= new BatonError(
        'APP_CONFIG_INVALID',
        `${source}: larger than ${MAX_APP_CONFIG_BYTES} bytes; keep the deploy config small`,
      );
      return;
    }
    const chunks: Buffer[] = (configChunks = []);
    entry.on('data', (chunk: Buffer) => chunks.push(chunk));
  };
  try {
    await list({ file, strict: true, maxReadSize: CHUNK, onReadEntry });
  } catch (err) {
    throw new BatonError('ARCHIVE_CORRUPT', `${file}: not a readable tar.gz: ${errorMessage(err)}`);
  }
  if (refused) throw refused;
  const config = configChunks
    ? parseAppDeployConfig(Buffer.concat(configChunks).toString('utf8'), source)
    : undefined;
  return { entries, config };
}

async function isGzip(file: string): Promise<boolean> {
  const handle = await open(file, 'r');
  try {
    const { buffer, bytesRead } = await handle.read(Buffer.alloc(2), 0, 2, 0);
    return bytesRead === 2 && buffer[0] === 0x1f && buffer[1] === 0x8b;
  } finally {
    await handle.close();
  }
}

type LinkCacheKey = `${number}:${number}`;

/** node-tar writes a second name of a hard-linked file as a link entry; the agent refuses those, so it is never told. */
class ForgetfulMap<K, V> extends Map<K, V> {
  override set(): this {
    return this;
  }
}

/**
 * Every path to pack, relative and '/'-separated, sorted by name at each level (a directory
 * before its contents), so the order never depends on the file system. Refuses what the agent
 * would refuse, so it fails here rather than on every host.
 */
async function walk(
  root: string,
  rules: readonly IgnoreRule[],
  outFile: string,
  statCache: Map<string, Stats>,
): Promise<string[]> {
  const out: string[] = [];
  const visit = async (rel: string): Promise<void> => {
    const names = (await readdir(rel ? path.join(root, rel) : root)).sort((a, b) =>
      a < b ? -1 : a > b ? 1 : 0,
    );
    for (const name of names) {
      const relPath = rel ? `${rel}/${name}` : name;
      const absolute = path.join(root, relPath);
      if (absolute === outFile) continue;
      const st = await lstat(absolute);
      if (ignored(rules, relPath, st.isDirectory())) continue;
      if (st.isSymbolicLink()) {
        const target = await readlink(absolute);
        const resolved = path.posix.normalize(path.posix.join(path.posix.dirname(relPath), target));
        if (path.isAbsolute(target) || resolved === '..' || resolved.startsWith('../'))
          throw new BatonError(
            'ARCHIVE_LINK_ESCAPE',
            `${absolute}: the symlink points outside the packed directory (${target}); make it relative and inside, or ignore it`,
          );
      } else if (!st.isFile() && !st.isDirectory())
        throw new BatonError(
          'ARCHIVE_SPECIAL_FILE',
          `${absolute}: not a file, directory or symlink; remove it or add it to ${IGNORE_FILE}`,
        );
      if (st.mode & 0o6000)
        throw new BatonError(
          'ARCHIVE_SETUID',
          `${absolute}: has the setuid or setgid bit, which the agent refuses; clear it (chmod ug-s) or ignore it`,
        );
      statCache.set(absolute, st);
      out.push(relPath);
      if (st.isDirectory()) await visit(relPath);
    }
  };
  await visit('');
  return out;
}
