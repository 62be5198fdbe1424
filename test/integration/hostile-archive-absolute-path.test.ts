import path from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { unpackRelease } from '../../src/artifact/unpack.js';
import { assertRefused, pax, scene, tarBlocks, writeGz, type Scene } from '../support/tar-craft.js';

// Entries named by absolute path, aimed at the sentinel dir beside the release.
describe('hostile archive: absolute paths', () => {
  let s: Scene;
  beforeEach(async () => (s = await scene()));
  afterEach(() => s.cleanup());

  const good = { path: 'good.txt', body: 'fine\n' };

  it('refuses a file named by an absolute path', async () => {
    const target = path.join(s.outside, 'pwned');
    await writeGz(s.archive, tarBlocks([good, { path: target, body: 'owned\n' }]));
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_ABSOLUTE_PATH');
    await s.assertUntouched();
  });

  it('refuses an absolute directory entry', async () => {
    await writeGz(s.archive, tarBlocks([{ path: `${s.outside}/made/`, type: '5' }]));
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_ABSOLUTE_PATH');
    await s.assertUntouched();
  });

  it('refuses an absolute path carried in a PAX path record', async () => {
    await writeGz(
      s.archive,
      tarBlocks([good, pax({ path: path.join(s.outside, 'pwned') }), { path: 'ok', body: 'x' }]),
    );
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_ABSOLUTE_PATH');
    await s.assertUntouched();
  });

  it('refuses an absolute path split across the ustar prefix and name', async () => {
    await writeGz(s.archive, tarBlocks([{ prefix: s.outside, path: 'pwned', body: 'owned\n' }]));
    await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_ABSOLUTE_PATH');
    await s.assertUntouched();
  });

  it('refuses Windows drive and UNC forms', async () => {
    for (const name of ['C:/Windows/pwned', 'c:pwned', '\\\\server\\share\\pwned']) {
      await writeGz(s.archive, tarBlocks([{ path: name, body: 'x' }]));
      await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_ABSOLUTE_PATH');
      await s.assertUntouched();
    }
  });
});
