import assert from 'node:assert/strict';
import { readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { unpackRelease } from '../../src/artifact/unpack.js';
import { assertRefused, scene, tarBlocks, writeGz, type Scene } from '../support/tar-craft.js';

// Hard links: one to a file outside would let a later write (or the app) change that file.
// Every hard link is refused, inside or out: the simplest safe rule; packers can store the file.
describe('hostile archive: hard links', () => {
  let s: Scene;
  beforeEach(async () => (s = await scene()));
  afterEach(() => s.cleanup());

  it('refuses a hard link to a file outside, which keeps a single link', async () => {
    const secret = path.join(s.dir, 'secret');
    await writeFile(secret, 'keep\n');
    await writeGz(
      s.archive,
      tarBlocks([
        { path: 'good.txt', body: 'fine\n' },
        { path: 'h', type: '1', linkpath: secret },
        { path: 'h2', type: '1', linkpath: '../../secret' },
      ]),
    );
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_HARDLINK');
    await s.assertUntouched();
    assert.equal((await stat(secret)).nlink, 1);
    assert.equal(await readFile(secret, 'utf8'), 'keep\n');
  });

  it('refuses a hard link climbing out with ..', async () => {
    await writeGz(s.archive, tarBlocks([{ path: 'h', type: '1', linkpath: '../../outside/x' }]));
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_HARDLINK');
    await s.assertUntouched();
  });

  it('refuses a hard link to a file inside the release too', async () => {
    await writeGz(
      s.archive,
      tarBlocks([
        { path: 'a.txt', body: 'a\n' },
        { path: 'b.txt', type: '1', linkpath: 'a.txt' },
      ]),
    );
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_HARDLINK');
    await s.assertUntouched();
  });
});
