import assert from 'node:assert/strict';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { unpackRelease } from '../../src/artifact/unpack.js';
import { assertRefused, pax, scene, tarBlocks, writeGz, type Scene } from '../support/tar-craft.js';

// Symlinks that point out of the release, and files written "through" a symlink.
describe('hostile archive: symlink escape', () => {
  let s: Scene;
  beforeEach(async () => (s = await scene()));
  afterEach(() => s.cleanup());

  const good = { path: 'good.txt', body: 'fine\n' };
  const pwned = () => path.join(s.outside, 'pwned');

  it('refuses link -> /outside (absolute), then link/pwned', async () => {
    await writeGz(
      s.archive,
      tarBlocks([
        good,
        { path: 'link', type: '2', linkpath: s.outside },
        { path: 'link/pwned', body: 'owned\n' },
      ]),
    );
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_LINK_ESCAPE');
    await s.assertUntouched();
    await assert.rejects(stat(pwned()), { code: 'ENOENT' });
  });

  it("refuses a link whose '..' climbs out from its own directory", async () => {
    await writeGz(
      s.archive,
      tarBlocks([
        { path: 'sub/', type: '5' },
        // From sub/: .. is the release, ../.. its parent, ../../.. the temp dir's parent.
        { path: 'sub/link', type: '2', linkpath: '../../../outside' },
        { path: 'sub/link/pwned', body: 'owned\n' },
      ]),
    );
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_LINK_ESCAPE');
    await s.assertUntouched();
  });

  it('refuses a link to the parent of the release root', async () => {
    await writeGz(s.archive, tarBlocks([{ path: 'up', type: '2', linkpath: '..' }]));
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_LINK_ESCAPE');
    await s.assertUntouched();
  });

  it('refuses a file written through a link that points inside (link -> sub, link/pwned)', async () => {
    await writeGz(
      s.archive,
      tarBlocks([
        { path: 'sub/', type: '5' },
        { path: 'link', type: '2', linkpath: 'sub' },
        { path: 'link/pwned', body: 'owned\n' },
      ]),
    );
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_LINK_ESCAPE');
    await s.assertUntouched();
  });

  it('refuses a chain that escapes only physically (self -> ., up -> self/..)', async () => {
    await writeGz(
      s.archive,
      tarBlocks([
        { path: 'self', type: '2', linkpath: '.' },
        { path: 'up', type: '2', linkpath: 'self/..' },
        { path: 'up/outside/pwned', body: 'owned\n' },
      ]),
    );
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_LINK_ESCAPE');
    await s.assertUntouched();
  });

  it('refuses an escaping target carried in a PAX linkpath record', async () => {
    await writeGz(
      s.archive,
      tarBlocks([
        good,
        pax({ linkpath: s.outside }),
        { path: 'link', type: '2', linkpath: 'good.txt' },
      ]),
    );
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_LINK_ESCAPE');
    await s.assertUntouched();
  });

  it('refuses an escaping target smuggled in a global PAX header', async () => {
    // node-tar's ReadEntry lets a global linkpath override the entry's own; its Header does not.
    await writeGz(
      s.archive,
      tarBlocks([
        good,
        pax({ linkpath: s.outside }, true),
        { path: 'link', type: '2', linkpath: 'good.txt' },
      ]),
    );
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_LINK_ESCAPE');
    await s.assertUntouched();
  });

  it('refuses a symlink that replaces a directory already unpacked', async () => {
    await writeGz(
      s.archive,
      tarBlocks([
        { path: 'dir/', type: '5' },
        { path: 'other/', type: '5' },
        { path: 'dir', type: '2', linkpath: 'other' },
        { path: 'dir/pwned', body: 'owned\n' },
      ]),
    );
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_CORRUPT');
    await s.assertUntouched();
  });

  it('refuses a file that replaces a symlink of the same name', async () => {
    await writeGz(
      s.archive,
      tarBlocks([
        { path: 'target.txt', body: 'real\n' },
        { path: 'link', type: '2', linkpath: 'target.txt' },
        { path: 'link', body: 'overwrite through the link\n' },
      ]),
    );
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_CORRUPT');
    await s.assertUntouched();
  });
});
