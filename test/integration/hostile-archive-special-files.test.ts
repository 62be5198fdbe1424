import assert from 'node:assert/strict';
import { lstat } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { unpackRelease } from '../../src/artifact/unpack.js';
import { errorCode } from '../../src/errors.js';
import {
  assertRefused,
  pax,
  scene,
  tarBlocks,
  writeGz,
  type CraftEntry,
  type Scene,
} from '../support/tar-craft.js';

// Device nodes, FIFOs and every other non-regular type: a release holds files, dirs and links.
describe('hostile archive: special files', () => {
  let s: Scene;
  beforeEach(async () => (s = await scene()));
  afterEach(() => s.cleanup());

  const good: CraftEntry = { path: 'good.txt', body: 'fine\n' };
  const cases: [string, CraftEntry][] = [
    ['a character device (/dev/mem)', { path: 'mem', type: '3', devmajor: 1, devminor: 1 }],
    ['a block device (/dev/sda)', { path: 'sda', type: '4', devmajor: 8, devminor: 0 }],
    ['a FIFO', { path: 'pipe', type: '6' }],
    ['a GNU sparse file', { path: 'sparse', type: 'S', body: 'x' }],
    ['a GNU dump directory', { path: 'dump', type: 'D', body: 'x\0' }],
    ['a type tar does not define (a socket, say)', { path: 'sock', type: 's' }],
  ];

  for (const [what, entry] of cases)
    it(`refuses ${what}`, async () => {
      await writeGz(s.archive, tarBlocks([good, entry]));
      await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_SPECIAL_FILE');
      await s.assertUntouched();
    });

  it('refuses a device that a PAX type record calls a file', async () => {
    await writeGz(
      s.archive,
      tarBlocks([
        good,
        pax({ type: 'File' }),
        { path: 'null', type: '3', devmajor: 1, devminor: 3 },
      ]),
    );
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_SPECIAL_FILE');
    await s.assertUntouched();
  });

  it('never lets a PAX type record turn a file into something else', async () => {
    // node-tar 7 drops PAX type records; if a later version reads them, the policy refuses.
    await writeGz(
      s.archive,
      tarBlocks([good, pax({ type: 'SymbolicLink', linkpath: '/' }), { path: 'f', body: 'x' }]),
    );
    try {
      await unpackRelease(s.archive, s.dest);
    } catch (err) {
      assert.ok(['ARCHIVE_CORRUPT', 'ARCHIVE_LINK_ESCAPE'].includes(errorCode(err) ?? ''));
      return s.assertUntouched();
    }
    assert.ok((await lstat(path.join(s.dest, 'f'))).isFile());
  });
});
