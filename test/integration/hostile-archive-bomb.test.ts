import { afterEach, beforeEach, describe, it } from 'node:test';
import { unpackRelease } from '../../src/artifact/unpack.js';
import { assertRefused, pax, scene, tarBlocks, writeGz, type Scene } from '../support/tar-craft.js';

// Archives that would exhaust the host: too many inodes, too many bytes (also when headers lie
// about sizes), or a gzip that inflates without bound.
describe('hostile archive: tar and gzip bombs', () => {
  let s: Scene;
  beforeEach(async () => (s = await scene()));
  afterEach(() => s.cleanup());

  it('refuses more files than maxFiles', async () => {
    const files = Array.from({ length: 11 }, (_, i) => ({ path: `f${i}`, body: 'x' }));
    await writeGz(s.archive, tarBlocks(files));
    await assertRefused(
      unpackRelease(s.archive, s.dest, { maxFiles: 10 }),
      'ARCHIVE_TOO_MANY_FILES',
    );
    await s.assertUntouched();
  });

  it('counts the parent directories an entry implies without listing them', async () => {
    await writeGz(s.archive, tarBlocks([{ path: 'a/b/c/d/e/f/g/h/x', body: 'x' }]));
    await assertRefused(
      unpackRelease(s.archive, s.dest, { maxFiles: 5 }),
      'ARCHIVE_TOO_MANY_FILES',
    );
    await s.assertUntouched();
  });

  it('counts entries too: one directory listed again and again', async () => {
    const again = Array.from({ length: 50 }, () => ({ path: 'd/', type: '5' }));
    await writeGz(s.archive, tarBlocks(again));
    await assertRefused(
      unpackRelease(s.archive, s.dest, { maxFiles: 10 }),
      'ARCHIVE_TOO_MANY_FILES',
    );
    await s.assertUntouched();
  });

  it('refuses a path hundreds of thousands of directories deep, from its header', async () => {
    // Carried in a PAX record; checking it component by component against every prefix would
    // cost its depth squared.
    const deep = 'a/'.repeat(400_000) + 'x';
    await writeGz(s.archive, tarBlocks([pax({ path: deep }), { path: 'x', body: 'x' }]));
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_CORRUPT');
    await s.assertUntouched();
  });

  it('refuses a file larger than maxBytes', async () => {
    await writeGz(s.archive, tarBlocks([{ path: 'big', zeros: 2000 }]));
    await assertRefused(unpackRelease(s.archive, s.dest, { maxBytes: 1000 }), 'ARCHIVE_TOO_LARGE');
    await s.assertUntouched();
  });

  it('refuses files that together pass maxBytes', async () => {
    const files = ['a', 'b', 'c'].map((path) => ({ path, zeros: 400 }));
    await writeGz(s.archive, tarBlocks(files));
    await assertRefused(unpackRelease(s.archive, s.dest, { maxBytes: 1000 }), 'ARCHIVE_TOO_LARGE');
    await s.assertUntouched();
  });

  it('refuses a header claiming a huge size from the header alone, before any body', async () => {
    // 2^45 bytes in base-256 and no body at all: reading on would only find a truncated archive.
    await writeGz(
      s.archive,
      tarBlocks([{ path: 'huge', size: 2 ** 45, base256Size: true }], { end: false }),
    );
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_TOO_LARGE');
    await s.assertUntouched();
  });

  it('counts the PAX size record when it lies above a small ustar size', async () => {
    await writeGz(
      s.archive,
      tarBlocks([pax({ size: '5000' }), { path: 'liar', size: 10, zeros: 5000 }]),
    );
    await assertRefused(unpackRelease(s.archive, s.dest, { maxBytes: 4096 }), 'ARCHIVE_TOO_LARGE');
    await s.assertUntouched();
  });

  it('refuses sizes that a local and a global PAX header disagree on', async () => {
    // node-tar's Header takes the local size (and reads 100 bytes), its ReadEntry the global one.
    await writeGz(
      s.archive,
      tarBlocks([
        pax({ size: '5' }, true),
        pax({ size: '100' }),
        { path: 'two-faced', size: 1, zeros: 100 },
      ]),
    );
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_CORRUPT');
    await s.assertUntouched();
  });

  it('refuses a gzip bomb by its compression ratio (16 MiB of zeros)', async () => {
    await writeGz(s.archive, tarBlocks([{ path: 'zeros', zeros: 16 * 1024 * 1024 }]));
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_RATIO');
    await s.assertUntouched();
  });

  it('refuses a bomb hidden after the end-of-archive marker', async () => {
    await writeGz(
      s.archive,
      tarBlocks([{ path: 'ok.txt', body: 'fine\n' }], { trailingZeros: 16 * 1024 * 1024 }),
    );
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_RATIO');
    await s.assertUntouched();
  });

  it('refuses 20,000 empty directory entries by count, before making them', async () => {
    const files = Array.from({ length: 20_000 }, (_, i) => ({ path: `d/e${i}`, type: '5' }));
    await writeGz(s.archive, tarBlocks(files));
    await assertRefused(
      unpackRelease(s.archive, s.dest, { maxFiles: 100 }),
      'ARCHIVE_TOO_MANY_FILES',
    );
    await s.assertUntouched();
  });
});
