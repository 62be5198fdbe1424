import { createReadStream } from 'node:fs';
import { Transform, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { Parser, type ReadEntry } from 'tar';
import { BatonError, errorMessage } from '../errors.js';
import { quote, refusal } from './entry-policy.js';
import { RATIO_GRACE_BYTES } from './unpack-limits.js';

/**
 * Handles one entry: must consume its data (or throw). Called once per entry, in archive order,
 * never two at a time. `signal` aborts when the archive fails elsewhere, so a handler waiting for
 * data that will never come can stop.
 */
export type EntryHandler = (entry: ReadEntry, signal: AbortSignal) => Promise<void>;

/**
 * Streams a .tar.gz through node-tar's Parser, entry by entry, with backpressure from the handler
 * all the way back to the file. Decompression is ours, not the Parser's, so that:
 * - compressed and decompressed bytes are counted where they flow, and the ratio judged;
 * - a gzip nested inside the gzip (which the Parser would silently inflate again) is refused;
 * - nothing after the end-of-archive marker reaches the Parser, which would otherwise keep all of
 *   it in one growing buffer; it is still inflated (counted, and its CRC checked), then dropped.
 * Every Parser warning is fatal: in its default mode a bad checksum or a truncated body is only a
 * warning, and the entries around it would still be unpacked.
 *
 * Resolves once the whole archive was read and every handler finished; on the first failure,
 * rejects with it, after any running handler has settled (so the caller may delete what it made).
 */
export async function readArchive(
  file: string,
  maxRatio: number,
  onEntry: EntryHandler,
): Promise<void> {
  const abort = new AbortController();
  let failure: Error | undefined;
  let compressed = 0;
  let decompressed = 0;
  let leading = Buffer.alloc(0);
  let sawEnd = false;
  let current: string | undefined;
  let work: Promise<void> = Promise.resolve();

  const at = (name = current) => (name === undefined ? '' : ` at entry ${quote(name)}`);
  const corrupt = (why: string, name?: string) =>
    new BatonError('ARCHIVE_CORRUPT', `archive is damaged${at(name)}: ${why}; build it again`);
  const fail = (err: unknown) => {
    if (failure !== undefined) return;
    failure = err instanceof Error ? err : new Error(errorMessage(err));
    abort.abort(failure);
    sink.destroy(failure);
  };

  const parser = new Parser({ strict: false, brotli: false, zstd: false });
  const parserEnded = new Promise<void>((resolve) => parser.once('end', resolve));
  const schedule = (entry: ReadEntry) => {
    work = work.then(() => {
      if (failure !== undefined) return;
      current = entry.header.path ?? entry.path;
      return onEntry(entry, abort.signal);
    });
    work.catch(fail);
  };
  parser.on('entry', schedule);
  // Entries of types tar does not know; the handler's policy refuses them by name.
  parser.on('ignoredEntry', (entry: ReadEntry) => {
    if (entry.meta)
      fail(
        refusal(
          'ARCHIVE_CORRUPT',
          entry.header.path,
          `is an extended header of ${entry.size} bytes, over the 1 MiB limit`,
        ),
      );
    else schedule(entry);
  });
  parser.on('warn', (_code: string, message: string, data: Record<string, unknown>) => {
    const source = (data.entry ?? data.header) as { path?: unknown } | undefined;
    fail(corrupt(message, typeof source?.path === 'string' ? source.path : undefined));
  });
  parser.on('error', (err: unknown) => fail(corrupt(errorMessage(err))));
  parser.on('eof', () => (sawEnd = true));

  const counter = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      compressed += chunk.length;
      done(null, chunk);
    },
  });

  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      decompressed += chunk.length;
      if (decompressed > RATIO_GRACE_BYTES && decompressed > maxRatio * compressed)
        return fail(
          new BatonError(
            'ARCHIVE_RATIO',
            `archive inflates ${Math.round(decompressed / compressed)}x (${decompressed} bytes from ${compressed}), over the ${maxRatio}x limit${sawEnd ? ' after the end-of-archive marker' : at()}: refusing a likely decompression bomb`,
          ),
        );
      if (sawEnd) return done();
      if (leading.length < 2) {
        leading = Buffer.concat([leading, chunk.subarray(0, 2 - leading.length)]);
        // Fewer than 4 bytes are only buffered by the Parser, so deciding on 2 is in time.
        if (leading[0] === 0x1f && leading[1] === 0x8b)
          return fail(corrupt('it is gzip inside gzip; a release archive is one .tar.gz'));
      }
      if (parser.write(chunk)) done();
      else parser.once('drain', () => done());
    },
    final(done) {
      parser.end();
      parserEnded
        .then(() => work)
        .then(() => {
          if (!sawEnd) throw corrupt('it ends without the end-of-archive marker (truncated?)');
        })
        .then(() => done(), done);
    },
  });

  try {
    await pipeline(createReadStream(file), counter, createGunzip(), sink);
  } catch (err) {
    // zlib's own errors (Z_DATA_ERROR, Z_BUF_ERROR, …) are the archive's fault; a missing or
    // unreadable file is the host's and comes through as it is.
    const code = (err as NodeJS.ErrnoException).code;
    fail(
      code?.startsWith('Z_') ? corrupt(`not a readable gzip stream (${errorMessage(err)})`) : err,
    );
  }
  await work.catch(() => undefined);
  if (failure !== undefined) throw failure;
}
