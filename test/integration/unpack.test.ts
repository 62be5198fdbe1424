import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  chmod,
  lstat,
  mkdir,
  readdir,
  readFile,
  readlink,
  stat,
  symlink,
  utimes,
  writeFile,
} from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as tar from 'tar';
import { DEFAULT_UNPACK_LIMITS, unpackRelease } from '../../src/artifact/unpack.js';
import { tempDir } from '../../support/temp-dir.js';
import { assertRefused } from '../support/tar-craft.js';

describe('unpackRelease of a normal archive', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>;
  let src: string;
  let archive: string;
  const big = randomBytes(3 * 1024 * 1024);
  const mtime = new Date('2024-05-06T07:08:09Z');

  before(async () => {
    tmp = await tempDir('baton-unpack-');
    src = path.join(tmp.dir, 'src');
    await mkdir(path.join(src, 'lib', 'deep', 'er'), { recursive: true });
    await mkdir(path.join(src, 'empty-dir'));
    await writeFile(path.join(src, 'README.md'), '# app\n');
    await writeFile(path.join(src, 'empty.txt'), '');
    await writeFile(path.join(src, 'lib', 'deep', 'er', 'big.bin'), big);
    await writeFile(path.join(src, 'run.sh'), '#!/bin/sh\necho hi\n');
    await chmod(path.join(src, 'run.sh'), 0o755);
    await utimes(path.join(src, 'README.md'), mtime, mtime);
    await symlink('../README.md', path.join(src, 'lib', 'readme-link'));
    await symlink('deep/er', path.join(src, 'lib', 'er-link'));
    archive = path.join(tmp.dir, 'release.tar.gz');
    await tar.c({ gzip: true, cwd: src, file: archive, portable: true }, ['.']);
  });
  after(async () => {
    await tmp?.cleanup();
  });

  it('unpacks files, nested directories and internal symlinks exactly', async () => {
    const dest = path.join(tmp.dir, 'releases', 'v1');
    const counts = await unpackRelease(archive, dest);

    assert.equal(await readFile(path.join(dest, 'README.md'), 'utf8'), '# app\n');
    assert.equal(await readFile(path.join(dest, 'empty.txt'), 'utf8'), '');
    assert.ok(big.equals(await readFile(path.join(dest, 'lib', 'deep', 'er', 'big.bin'))));
    assert.deepEqual(await readdir(path.join(dest, 'empty-dir')), []);
    assert.equal(await readlink(path.join(dest, 'lib', 'readme-link')), '../README.md');
    assert.equal(await readFile(path.join(dest, 'lib', 'readme-link'), 'utf8'), '# app\n');
    assert.equal(await readlink(path.join(dest, 'lib', 'er-link')), 'deep/er');
    assert.ok((await lstat(path.join(dest, 'lib', 'er-link'))).isSymbolicLink());

    assert.equal((await stat(path.join(dest, 'run.sh'))).mode & 0o7777, 0o755);
    assert.equal((await stat(dest)).mode & 0o7777, 0o755);
    assert.equal((await stat(path.join(dest, 'README.md'))).mtime.getTime(), mtime.getTime());

    // README, empty.txt, run.sh, big.bin; lib, deep, er, empty-dir; two links.
    assert.deepEqual(counts, { files: 10, bytes: big.length + 6 + 18 });
    // Nothing but the release beside it: the temp dir became the release.
    assert.deepEqual(await readdir(path.join(tmp.dir, 'releases')), ['v1']);
  });

  it('refuses a destination that already exists and leaves it alone', async () => {
    const dest = path.join(tmp.dir, 'taken');
    await mkdir(dest);
    await writeFile(path.join(dest, 'keep'), 'mine');
    await assertRefused(unpackRelease(archive, dest), 'RELEASE_EXISTS');
    assert.deepEqual(await readdir(dest), ['keep']);
    assert.deepEqual(
      (await readdir(tmp.dir)).filter((n) => n.startsWith('.')),
      [],
      'no temp dir left',
    );
  });

  it('unpacks many small files with the limits given', async () => {
    const many = path.join(tmp.dir, 'many');
    await mkdir(path.join(many, 'd'), { recursive: true });
    for (let i = 0; i < 600; i++) await writeFile(path.join(many, 'd', `f${i}.txt`), `file ${i}\n`);
    const file = path.join(tmp.dir, 'many.tar.gz');
    await tar.c({ gzip: true, cwd: many, file }, ['d']);
    const dest = path.join(tmp.dir, 'releases', 'many');
    const counts = await unpackRelease(file, dest, { maxFiles: 601 });
    assert.equal(counts.files, 601);
    assert.equal((await readdir(path.join(dest, 'd'))).length, 600);
    assert.equal(await readFile(path.join(dest, 'd', 'f599.txt'), 'utf8'), 'file 599\n');
  });

  it('has the documented default limits', () => {
    assert.deepEqual(DEFAULT_UNPACK_LIMITS, {
      maxFiles: 100_000,
      maxBytes: 2 * 1024 ** 3,
      maxRatio: 200,
    });
  });

  it('refuses a limit that is not a positive number', async () => {
    await assert.rejects(
      unpackRelease(archive, path.join(tmp.dir, 'x'), { maxFiles: 0 }),
      RangeError,
    );
  });
});
