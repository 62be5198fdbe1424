import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { stat, truncate, writeFile } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip, gzipSync } from 'node:zlib';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { unpackRelease } from '../../src/artifact/unpack.js';
import { assertRefused, pax, scene, tarBlocks, writeGz, type Scene } from '../support/tar-craft.js';

// Damaged, truncated or disguised archives: each is refused whole, even when the entries before
// the damage were fine, so a half-written release never appears.
describe('hostile archive: corrupt and truncated', () => {
  let s: Scene;
  beforeEach(async () => (s = await scene()));
  afterEach(() => s.cleanup());

  const good = { path: 'good.txt', body: 'fine\n' };
  const noise = (path: string) => ({ path, body: randomBytes(256 * 1024) });

  it('refuses a .tar.gz cut in half', async () => {
    await writeGz(s.archive, tarBlocks([good, noise('a'), noise('b')]));
    await truncate(s.archive, Math.floor((await stat(s.archive)).size / 2));
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_CORRUPT');
    await s.assertUntouched();
  });

  it('refuses a file that is not gzip', async () => {
    await writeFile(s.archive, 'this is not an archive\n'.repeat(100));
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_CORRUPT');
    await s.assertUntouched();
  });

  it('refuses an uncompressed tar', async () => {
    await writeFile(s.archive, Buffer.concat([...tarBlocks([good])]));
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_CORRUPT');
    await s.assertUntouched();
  });

  it('refuses an empty file', async () => {
    await writeFile(s.archive, '');
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_CORRUPT');
    await s.assertUntouched();
  });

  it('refuses a header with a bad checksum', async () => {
    await writeGz(s.archive, tarBlocks([good, { path: 'bad', body: 'x', badChecksum: true }]));
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_CORRUPT');
    await s.assertUntouched();
  });

  it('refuses a tar cut inside a body, even in a complete gzip', async () => {
    const blocks = [
      ...tarBlocks([good, { path: 'cut', size: 5000, body: 'only this' }], { end: false }),
    ];
    await writeGz(s.archive, blocks);
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_CORRUPT');
    await s.assertUntouched();
  });

  it('refuses a tar without its end-of-archive marker', async () => {
    await writeGz(s.archive, tarBlocks([good], { end: false }));
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_CORRUPT');
    await s.assertUntouched();
  });

  it('refuses a header whose size lies low (its data then reads as a bad header)', async () => {
    await writeGz(s.archive, tarBlocks([good, { path: 'liar', size: 10, body: 'y'.repeat(2000) }]));
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_CORRUPT');
    await s.assertUntouched();
  });

  it('refuses gzip inside gzip (which node-tar would inflate again unchecked)', async () => {
    const inner = gzipSync(Buffer.concat([...tarBlocks([good])]));
    await pipeline(Readable.from([inner]), createGzip(), createWriteStream(s.archive));
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_CORRUPT');
    await s.assertUntouched();
  });

  it('refuses an extended header over 1 MiB', async () => {
    await writeGz(s.archive, tarBlocks([good, pax({ comment: 'c'.repeat(1100 * 1024) }), good]));
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_CORRUPT');
    await s.assertUntouched();
  });

  it('refuses a link target smuggled onto a regular file by a global PAX header', async () => {
    await writeGz(s.archive, tarBlocks([pax({ linkpath: 'elsewhere' }, true), good]));
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_CORRUPT');
    await s.assertUntouched();
  });
});
