import assert from 'node:assert/strict';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { unpackRelease } from '../../src/artifact/unpack.js';
import { errorCode } from '../../src/errors.js';
import { assertRefused, pax, scene, tarBlocks, writeGz, type Scene } from '../support/tar-craft.js';

// Modes that grant more than a release needs: setuid/setgid/sticky are refused; group and other
// write are stripped; ownership in the archive (root here) is never applied.
describe('hostile archive: setuid, setgid and sticky bits', () => {
  let s: Scene;
  beforeEach(async () => (s = await scene()));
  afterEach(() => s.cleanup());

  const good = { path: 'good.txt', body: 'fine\n' };

  for (const [what, mode, type] of [
    ['a setuid file', 0o4755, '0'],
    ['a setgid file', 0o2755, '0'],
    ['a sticky world-writable directory', 0o1777, '5'],
    ['a setgid directory', 0o2755, '5'],
  ] as const)
    it(`refuses ${what}`, async () => {
      await writeGz(s.archive, tarBlocks([good, { path: 'x', mode, type, uid: 0, gid: 0 }]));
      await assertRefused(unpackRelease(s.archive, s.dest), 'ARCHIVE_SETUID');
      await s.assertUntouched();
    });

  it('never lets a PAX mode record put setuid on disk', async () => {
    // node-tar 7 drops PAX mode records; if a later version reads them, the policy refuses.
    await writeGz(
      s.archive,
      tarBlocks([good, pax({ mode: String(0o4755) }), { path: 'x', mode: 0o755, body: 'x' }]),
    );
    try {
      await unpackRelease(s.archive, s.dest);
    } catch (err) {
      assert.equal(errorCode(err), 'ARCHIVE_SETUID');
      return s.assertUntouched();
    }
    assert.equal((await stat(path.join(s.dest, 'x'))).mode & 0o7777, 0o755);
  });

  it('strips group and other write and keeps no ownership from the archive', async () => {
    await writeGz(
      s.archive,
      tarBlocks([
        { path: 'shared/', type: '5', mode: 0o777, uid: 0, gid: 0 },
        { path: 'shared/tool', mode: 0o777, uid: 0, gid: 0, body: '#!/bin/sh\n' },
        { path: 'shared/data', mode: 0o666, uid: 0, gid: 0, body: 'd' },
      ]),
    );
    await unpackRelease(s.archive, s.dest);
    const dir = await stat(path.join(s.dest, 'shared'));
    const tool = await stat(path.join(s.dest, 'shared', 'tool'));
    const data = await stat(path.join(s.dest, 'shared', 'data'));
    assert.equal(dir.mode & 0o7777, 0o755);
    assert.equal(tool.mode & 0o7777, 0o755);
    assert.equal(data.mode & 0o7777, 0o644);
    for (const st of [dir, tool, data]) {
      assert.equal(st.uid, process.getuid?.());
      assert.equal(st.gid, process.getgid?.());
    }
  });
});
