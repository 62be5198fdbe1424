import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { chmod, link, mkdir, readFile, stat, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { create } from 'tar';
import { hashFile, packDirectory, packInput } from '../../src/artifact/pack.js';
import { listEntries, rejectsWith, writeTree, type Tree } from '../support/artifact-support.js';
import { tempDir } from '../../support/temp-dir.js';
import { tarBlocks, writeGz } from '../support/tar-craft.js';

const TREE: Tree = {
  'server.js': 'console.log("hi")\n',
  'lib/util.js': 'export const x = 1;\n',
  'lib/deep/data.json': '{"a":1}\n',
  'public/logo.bin': Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919) % 256)),
  'README.md': '# app\n',
  'current.js': { link: 'server.js' },
};

describe('packDirectory', () => {
  let tmp: { dir: string; cleanup: () => Promise<void> };
  let n = 0;
  /** A fresh directory under the test's temp dir. */
  const fresh = async (name = 'd') => {
    const dir = path.join(tmp.dir, `${name}-${n++}`);
    await mkdir(dir, { recursive: true });
    return dir;
  };
  before(async () => (tmp = await tempDir('baton-pack-')));
  after(() => tmp.cleanup());

  it('gives the same digest for the same folder packed twice', async () => {
    const src = await fresh();
    await writeTree(src, TREE);
    const a = await packDirectory(src, path.join(tmp.dir, 'a.tgz'));
    const b = await packDirectory(src, path.join(tmp.dir, 'b.tgz'));
    assert.equal(a.sha256, b.sha256);
    assert.equal(a.size, b.size);
    // 6 entries written plus the directories lib/, lib/deep/, public/.
    assert.equal(a.entries, 9);
    assert.deepEqual(await hashFile(path.join(tmp.dir, 'a.tgz')), {
      sha256: a.sha256,
      size: a.size,
    });
  });

  it('ignores mtimes, creation order and the umask', async () => {
    const first = await fresh();
    await writeTree(first, TREE);
    const second = await fresh();
    await writeTree(second, Object.fromEntries(Object.entries(TREE).reverse()));
    await utimes(path.join(second, 'server.js'), new Date(2001, 1, 1), new Date(2001, 1, 1));
    await utimes(path.join(second, 'lib'), new Date(2030, 1, 1), new Date(2030, 1, 1));
    await chmod(path.join(second, 'README.md'), 0o664);
    await chmod(path.join(second, 'lib'), 0o775);
    const a = await packDirectory(first, path.join(tmp.dir, 'order-a.tgz'));
    const b = await packDirectory(second, path.join(tmp.dir, 'order-b.tgz'));
    assert.equal(a.sha256, b.sha256);
    const paths = (await listEntries(path.join(tmp.dir, 'order-b.tgz'))).map((e) => e.path);
    assert.deepEqual(paths, [...paths].sort());
  });

  it('gives another digest for other content, or another executable bit', async () => {
    const src = await fresh();
    await writeTree(src, TREE);
    const before = await packDirectory(src, path.join(tmp.dir, 'c1.tgz'));
    await writeFile(path.join(src, 'lib/util.js'), 'export const x = 2;\n');
    const edited = await packDirectory(src, path.join(tmp.dir, 'c2.tgz'));
    assert.notEqual(edited.sha256, before.sha256);
    await chmod(path.join(src, 'server.js'), 0o755);
    const executable = await packDirectory(src, path.join(tmp.dir, 'c3.tgz'));
    assert.notEqual(executable.sha256, edited.sha256);
  });

  it('skips .git, the patterns given and those in .batonignore', async () => {
    const src = await fresh();
    await writeTree(src, {
      ...TREE,
      '.git/HEAD': 'ref: refs/heads/main\n',
      'debug.log': 'x',
      'lib/trace.log': 'x',
      'tmp/scratch': 'x',
      'lib/tmp': 'a file named tmp stays: the pattern is for directories',
      'cache/a/keep.txt': 'x',
      'build/cache/drop.txt': 'x',
      '.batonignore': '# comments and blank lines are skipped\n\n*.log\ntmp/\n/build/cache\n',
    });
    const out = path.join(tmp.dir, 'ignore.tgz');
    await packDirectory(src, out, { ignore: ['README.md'] });
    const paths = (await listEntries(out)).map((e) => e.path);
    assert.deepEqual(paths, [
      '.batonignore',
      'build/',
      'cache/',
      'cache/a/',
      'cache/a/keep.txt',
      'current.js',
      'lib/',
      'lib/deep/',
      'lib/deep/data.json',
      'lib/tmp',
      'lib/util.js',
      'public/',
      'public/logo.bin',
      'server.js',
    ]);
  });

  it('matches ** across directories and ? within a name', async () => {
    const src = await fresh();
    await writeTree(src, {
      'a/b/c/x.map': 'x',
      'a/y.map': 'x',
      'z.map': 'x',
      'v1.txt': 'x',
      'v10.txt': 'x',
    });
    const out = path.join(tmp.dir, 'glob.tgz');
    await packDirectory(src, out, { ignore: ['a/**/*.map', 'v?.txt'] });
    const paths = (await listEntries(out)).map((e) => e.path);
    assert.deepEqual(paths, ['a/', 'a/b/', 'a/b/c/', 'v10.txt', 'z.map']);
  });

  it('refuses negated ignore patterns', async () => {
    const src = await fresh();
    await writeTree(src, { ...TREE, '.batonignore': '*.js\n!server.js\n' });
    await rejectsWith(
      () => packDirectory(src, path.join(tmp.dir, 'neg.tgz')),
      'APP_CONFIG_INVALID',
    );
  });

  it('leaves out the archive it is writing when that lies inside the folder', async () => {
    const src = await fresh();
    await writeTree(src, TREE);
    const out = path.join(src, 'out.tgz');
    const a = await packDirectory(src, out);
    const b = await packDirectory(src, out);
    assert.equal(a.sha256, b.sha256);
    assert.ok(!(await listEntries(out)).some((e) => e.path === 'out.tgz'));
  });

  it('packs hard links as plain files and keeps in-tree symlinks', async () => {
    const src = await fresh();
    await writeTree(src, TREE);
    await link(path.join(src, 'server.js'), path.join(src, 'server-copy.js'));
    const out = path.join(tmp.dir, 'links.tgz');
    await packDirectory(src, out);
    const types = Object.fromEntries((await listEntries(out)).map((e) => [e.path, e.type]));
    assert.equal(types['server.js'], 'File');
    assert.equal(types['server-copy.js'], 'File');
    assert.equal(types['current.js'], 'SymbolicLink');
  });

  it('packs names that node-tar would otherwise read as options', async () => {
    const src = await fresh();
    await writeTree(src, { '@other.tgz': 'not an archive', '-rf': 'x' });
    const out = path.join(tmp.dir, 'names.tgz');
    const r = await packDirectory(src, out);
    assert.equal(r.entries, 2);
    assert.deepEqual((await listEntries(out)).map((e) => e.path).sort(), ['-rf', '@other.tgz']);
  });

  it('refuses symlinks that leave the folder', async () => {
    for (const target of ['../../outside', '/etc/passwd', 'deep/../../../x']) {
      const src = await fresh();
      await writeTree(src, { ...TREE, 'lib/escape': { link: target } });
      const out = path.join(tmp.dir, 'escape.tgz');
      await rejectsWith(() => packDirectory(src, out), 'ARCHIVE_LINK_ESCAPE');
      await assert.rejects(stat(out), { code: 'ENOENT' });
    }
  });

  it('refuses setuid files', async () => {
    const src = await fresh();
    await writeTree(src, TREE);
    await chmod(path.join(src, 'server.js'), 0o4755);
    await rejectsWith(() => packDirectory(src, path.join(tmp.dir, 'suid.tgz')), 'ARCHIVE_SETUID');
  });

  it('validates baton.yml before writing anything', async () => {
    const src = await fresh();
    await writeTree(src, { ...TREE, 'baton.yml': 'comand: [node, server.js]\n' });
    const out = path.join(tmp.dir, 'bad-config.tgz');
    await rejectsWith(() => packDirectory(src, out), 'APP_CONFIG_INVALID');
    await assert.rejects(stat(out), { code: 'ENOENT' });
  });

  it('returns the validated baton.yml', async () => {
    const src = await fresh();
    await writeTree(src, { ...TREE, 'baton.yml': 'command: [node, server.js]\n' });
    const r = await packDirectory(src, path.join(tmp.dir, 'config.tgz'));
    assert.deepEqual(r.config, { command: ['node', 'server.js'] });
  });
});

describe('packInput', () => {
  let tmp: { dir: string; cleanup: () => Promise<void> };
  before(async () => (tmp = await tempDir('baton-pack-input-')));
  after(() => tmp.cleanup());

  /** A tar.gz made by node-tar's own create, not by packDirectory. */
  const archiveOf = async (name: string, tree: Tree): Promise<string> => {
    const src = path.join(tmp.dir, `${name}-src`);
    await writeTree(src, tree);
    const file = path.join(tmp.dir, `${name}.tar.gz`);
    await create({ gzip: true, file, cwd: src }, Object.keys(tree));
    return file;
  };

  it('copies a ready archive as it is, hashing and counting it', async () => {
    const input = await archiveOf('ready', {
      'a.txt': 'a',
      'b/c.txt': 'c',
      'baton.yml': 'readiness: { type: delay, ms: 10 }\n',
    });
    const out = path.join(tmp.dir, 'copied.tgz');
    const r = await packInput(input, out);
    const bytes = await readFile(input);
    assert.deepEqual(await readFile(out), bytes);
    assert.equal(r.sha256, createHash('sha256').update(bytes).digest('hex'));
    assert.equal(r.size, bytes.length);
    // a.txt, b/c.txt, baton.yml: create was given files only, so no directory entries.
    assert.equal(r.entries, 3);
    assert.deepEqual(r.config, { readiness: { type: 'delay', ms: 10 } });
  });

  it('packs a directory', async () => {
    const src = path.join(tmp.dir, 'dir-input');
    await writeTree(src, TREE);
    const r = await packInput(src, path.join(tmp.dir, 'dir-input.tgz'));
    assert.equal(r.entries, 9);
  });

  it('refuses an archive whose baton.yml is invalid', async () => {
    const input = await archiveOf('bad-config', { 'baton.yml': 'readiness: { type: magic }\n' });
    const out = path.join(tmp.dir, 'bad-config-out.tgz');
    await rejectsWith(() => packInput(input, out), 'APP_CONFIG_INVALID');
    await assert.rejects(stat(out), { code: 'ENOENT' });
  });

  it('refuses a ready archive holding a hard link', async () => {
    // Written by hand: node-tar's own Pack of a hard-linked pair can break off with an uncaught
    // zlib error (a race in its link handling; isaacs/node-tar#448, #460), which failed CI once.
    const input = path.join(tmp.dir, 'hardlinked.tar.gz');
    await writeGz(
      input,
      tarBlocks([
        { path: 'a.txt', body: 'a' },
        { path: 'b.txt', type: '1', linkpath: 'a.txt' },
      ]),
    );
    assert.equal((await listEntries(input))[1]?.type, 'Link');
    await rejectsWith(
      () => packInput(input, path.join(tmp.dir, 'hardlinked-out.tgz')),
      'ARCHIVE_HARDLINK',
    );
  });

  it('refuses a file that is not a tar.gz, or not gzip-compressed', async () => {
    const garbage = path.join(tmp.dir, 'garbage.tar.gz');
    await writeFile(garbage, 'this is not gzip at all, just text, long enough to look at');
    await rejectsWith(
      () => packInput(garbage, path.join(tmp.dir, 'garbage-out.tgz')),
      'ARCHIVE_CORRUPT',
    );
    const plain = path.join(tmp.dir, 'plain.tar.gz');
    await create({ file: plain, cwd: tmp.dir }, ['garbage.tar.gz']);
    await rejectsWith(
      () => packInput(plain, path.join(tmp.dir, 'plain-out.tgz')),
      'ARCHIVE_CORRUPT',
    );
    const other = path.join(tmp.dir, 'notes.txt');
    await writeFile(other, 'x');
    await rejectsWith(() => packInput(other, path.join(tmp.dir, 'notes.tgz')), 'USAGE');
  });
});
