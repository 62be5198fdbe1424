import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { BatonError } from '../errors.js';

/**
 * The archives a store holds, by their sha256 (`<dir>/<sha256>.tar.gz`): an archive the store
 * has is never uploaded or copied again. Each is written to a temp file, hashed on the way, and
 * renamed into place only when digest and size are what its manifest promised.
 */
export class ArchiveCache {
  constructor(
    private readonly dir: string,
    private readonly tmp: string,
    private readonly maxBytes: number,
  ) {}

  path(sha256: string): string {
    return path.join(this.dir, `${sha256}.tar.gz`);
  }

  async has(sha256: string): Promise<boolean> {
    return (await stat(this.path(sha256)).catch(() => undefined))?.isFile() ?? false;
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
    const limit = this.maxBytes;
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
      await rename(tmp, this.path(digest));
    } finally {
      await rm(tmp, { force: true });
    }
  }

  /**
   * Imports an archive file from this host's disk (a local deploy). Free when the store has it;
   * true when it was copied (and hashed) now.
   */
  async importFile(file: string, expected: { sha256: string; size: number }): Promise<boolean> {
    if (await this.has(expected.sha256)) return false;
    await this.receive(createReadStream(file), expected);
    return true;
  }

  /** Refuses an archive over the agent's `maxArchiveBytes`, before a byte is asked for. */
  checkSize(size: number): void {
    if (size > this.maxBytes)
      throw new BatonError(
        'ARCHIVE_TOO_LARGE',
        `archive of ${size} bytes is over this agent's limit of ${this.maxBytes}; raise maxArchiveBytes in the agent config`,
      );
  }
}
