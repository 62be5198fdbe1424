import assert from 'node:assert/strict';
import { createWriteStream } from 'node:fs';
import { mkdir, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { BatonError, errorCode } from '../../src/errors.js';
import { tempDir } from '../../support/temp-dir.js';

/**
 * Hand-made tar entries for hostile-archive tests: every header field is what the test says,
 * including the ones no tar tool would write. Numbers are written as octal unless noted.
 */
export interface CraftEntry {
  path: string;
  /** The typeflag byte: '0' file, '1' hard link, '2' symlink, '3' char device, '4' block
   * device, '5' directory, '6' FIFO, 'x' PAX header, 'g' global PAX header, 'L' GNU long name. */
  type?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  /** The size field; defaults to the body's length. Set it to lie. */
  size?: number;
  /** Write the size field in base-256, for sizes octal cannot hold. */
  base256Size?: boolean;
  linkpath?: string;
  /** The ustar prefix field, joined to `path` with a '/' by readers. */
  prefix?: string;
  devmajor?: number;
  devminor?: number;
  mtime?: number;
  body?: Buffer | string;
  /** A body of this many zero bytes, produced lazily (for bombs). */
  zeros?: number;
  /** Store a checksum that does not match. */
  badChecksum?: boolean;
}

const BLOCK = 512;
const ZERO_CHUNK = Buffer.alloc(64 * 1024);

/** One 512-byte ustar header with a correct (or deliberately wrong) checksum. */
export function header(e: CraftEntry, bodyLength: number): Buffer {
  const b = Buffer.alloc(BLOCK);
  const type = e.type ?? '0';
  b.write(e.path, 0, 100, 'utf8');
  octal(b, 100, 8, e.mode ?? (type === '5' ? 0o755 : 0o644));
  octal(b, 108, 8, e.uid ?? 1000);
  octal(b, 116, 8, e.gid ?? 1000);
  const size = e.size ?? bodyLength;
  if (e.base256Size) {
    b[124] = 0x80;
    for (let i = 135, n = size; i > 124; i--, n = Math.floor(n / 256)) b[i] = n % 256;
  } else octal(b, 124, 12, size);
  octal(b, 136, 12, e.mtime ?? 1_700_000_000);
  b.write(type, 156, 1, 'latin1');
  if (e.linkpath !== undefined) b.write(e.linkpath, 157, 100, 'utf8');
  b.write('ustar\u000000', 257, 8, 'latin1');
  b.write('root', 265, 32);
  b.write('root', 297, 32);
  octal(b, 329, 8, e.devmajor ?? 0);
  octal(b, 337, 8, e.devminor ?? 0);
  if (e.prefix !== undefined) b.write(e.prefix, 345, 155, 'utf8');
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (const byte of b) sum += byte;
  if (e.badChecksum) sum += 1;
  b.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'latin1');
  return b;
}

/** A zero-padded octal number ending in NUL, as ustar writes it. */
function octal(b: Buffer, offset: number, width: number, value: number): void {
  b.write(`${value.toString(8).padStart(width - 1, '0')}\0`, offset, width, 'latin1');
}

/** A PAX extended header entry ('x', or 'g' when global) carrying `records`. */
export function pax(records: Record<string, string>, global = false): CraftEntry {
  let body = '';
  for (const [key, value] of Object.entries(records)) {
    const rest = ` ${key}=${value}\n`;
    let len = Buffer.byteLength(rest) + 1;
    while (String(len).length + Buffer.byteLength(rest) !== len) len++;
    body += `${len}${rest}`;
  }
  return { path: global ? 'pax_global_header' : 'PaxHeader', type: global ? 'g' : 'x', body };
}

/** A GNU long-name ('L') entry naming the next entry. */
export function longName(name: string): CraftEntry {
  return { path: '././@LongLink', type: 'L', body: `${name}\0` };
}

/** The tar stream for `entries`, lazily, then the end-of-archive marker unless `end` is false. */
export function* tarBlocks(
  entries: CraftEntry[],
  opts: { end?: boolean; trailingZeros?: number } = {},
): Generator<Buffer> {
  for (const e of entries) {
    const body = typeof e.body === 'string' ? Buffer.from(e.body) : e.body;
    const length = body?.length ?? e.zeros ?? 0;
    yield header(e, length);
    if (body) yield body;
    for (let left = e.zeros ?? 0; left > 0; left -= ZERO_CHUNK.length)
      yield ZERO_CHUNK.subarray(0, Math.min(left, ZERO_CHUNK.length));
    if (length % BLOCK) yield Buffer.alloc(BLOCK - (length % BLOCK));
  }
  if (opts.end !== false) yield Buffer.alloc(2 * BLOCK);
  for (let left = opts.trailingZeros ?? 0; left > 0; left -= ZERO_CHUNK.length)
    yield ZERO_CHUNK.subarray(0, Math.min(left, ZERO_CHUNK.length));
}

/** Gzips `chunks` (streamed) into `file`. */
export async function writeGz(file: string, chunks: Iterable<Buffer>): Promise<void> {
  await pipeline(Readable.from(chunks), createGzip(), createWriteStream(file));
}

/**
 * A temp dir laid out for one hostile archive: the archive file, a `releases/` dir the release
 * would go into, and an `outside/` dir beside it that the archive tries to reach. Relative to
 * the release (or to its temp dir beside it), `../../outside` is the sentinel.
 */
export interface Scene {
  dir: string;
  archive: string;
  releases: string;
  dest: string;
  outside: string;
  cleanup(): Promise<void>;
  /** Nothing reached `outside/`, no release appeared, and no temp dir was left behind. */
  assertUntouched(): Promise<void>;
}

export async function scene(): Promise<Scene> {
  const { dir, cleanup } = await tempDir('baton-unpack-');
  const releases = path.join(dir, 'releases');
  const outside = path.join(dir, 'outside');
  await mkdir(releases);
  await mkdir(outside);
  return {
    dir,
    archive: path.join(dir, 'release.tar.gz'),
    releases,
    dest: path.join(releases, 'v1'),
    outside,
    cleanup,
    async assertUntouched() {
      assert.deepEqual(await readdir(outside), [], 'nothing may be written outside the release');
      assert.deepEqual(await readdir(releases), [], 'no release and no temp dir may be left');
      await assert.rejects(stat(path.join(dir, 'releases', 'v1')), { code: 'ENOENT' });
    },
  };
}

/** Asserts that `promise` rejects with a BatonError carrying `code`. */
export async function assertRefused(promise: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof BatonError, `expected a BatonError, got ${String(err)}`);
    assert.equal(errorCode(err), code, err.message);
    assert.ok(!err.message.includes('\n'), 'the message is one line');
    return true;
  });
}
