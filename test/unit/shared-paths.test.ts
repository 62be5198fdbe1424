import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import type { Stats } from 'node:fs';
import {
  chmod,
  chown,
  lstat,
  mkdir,
  readdir,
  readFile,
  readlink,
  rm,
  stat,
  symlink,
  writeFile,
} from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { BatonError } from '../../src/errors.js';
import { linkShared, prepareShared, sharedRoot } from '../../src/supervisor/shared-paths.js';
import { tempDir } from '../../support/temp-dir.js';

const NOBODY = { uid: 65534, gid: 65534 };

function invalid(...mustName: string[]): (err: unknown) => boolean {
  return (err) => {
    assert.ok(err instanceof BatonError, String(err));
    assert.equal(err.code, 'SHARED_PATH_INVALID', err.message);
    for (const s of mustName) assert.ok(err.message.includes(s), `"${s}" in: ${err.message}`);
    return true;
  };
}

/** A state dir with a shared root and one release directory, cleaned up after `fn`. */
async function withDirs(
  fn: (dirs: { root: string; release: string; dir: string }) => Promise<void>,
): Promise<void> {
  const tmp = await tempDir();
  try {
    const release = path.join(tmp.dir, 'releases', 'r1');
    await mkdir(release, { recursive: true });
    await fn({ root: sharedRoot(path.join(tmp.dir, 'state'), 'web'), release, dir: tmp.dir });
  } finally {
    await tmp.cleanup();
  }
}

describe('sharedRoot', () => {
  it('is <stateDir>/apps/<app>/shared', () => {
    assert.equal(sharedRoot('/var/lib/baton', 'web'), '/var/lib/baton/apps/web/shared');
  });
});

describe('prepareShared', () => {
  it('creates dirs, empty files and the dirs on the way, owned by the app, 0750 and 0640', async () => {
    await withDirs(async ({ root }) => {
      await prepareShared(root, { dirs: ['storage/uploads'], files: ['config/.env'] }, NOBODY);
      const rootStat = await stat(root);
      assert.equal(rootStat.mode & 0o7777, 0o755);
      assert.equal(rootStat.uid, process.getuid!(), 'root stays the agent’s');
      for (const [rel, mode, isDir] of [
        ['storage', 0o750, true],
        ['storage/uploads', 0o750, true],
        ['config', 0o750, true],
        ['config/.env', 0o640, false],
      ] as const) {
        const st = await lstat(path.join(root, rel));
        assert.equal(st.isDirectory(), isDir, rel);
        assert.equal(st.mode & 0o7777, mode, rel);
        assert.equal(st.uid, NOBODY.uid, rel);
        assert.equal(st.gid, NOBODY.gid, rel);
      }
      assert.equal(await readFile(path.join(root, 'config/.env'), 'utf8'), '');
    });
  });

  it('leaves what exists as it is: contents, owner and mode', async () => {
    await withDirs(async ({ root }) => {
      await mkdir(path.join(root, 'storage'), { recursive: true, mode: 0o700 });
      await writeFile(path.join(root, 'app.env'), 'A=1\n', { mode: 0o600 });
      await prepareShared(root, { dirs: ['storage/logs'], files: ['app.env'] }, NOBODY);
      const storage = await stat(path.join(root, 'storage'));
      assert.equal(storage.uid, 0);
      assert.equal(storage.mode & 0o7777, 0o700);
      const env = await stat(path.join(root, 'app.env'));
      assert.equal(env.uid, 0);
      assert.equal(env.mode & 0o7777, 0o600);
      assert.equal(await readFile(path.join(root, 'app.env'), 'utf8'), 'A=1\n');
      assert.equal((await stat(path.join(root, 'storage/logs'))).uid, NOBODY.uid);
    });
  });

  it('keeps the agent as owner when no owner is given', async () => {
    await withDirs(async ({ root }) => {
      await prepareShared(root, { dirs: ['data'], files: [] }, undefined);
      assert.equal((await stat(path.join(root, 'data'))).uid, process.getuid!());
    });
  });

  it('refuses a symlink out of the shared root, creating nothing through it', async () => {
    await withDirs(async ({ root, dir }) => {
      const outside = path.join(dir, 'outside');
      await mkdir(outside);
      await mkdir(root, { recursive: true });
      await symlink(outside, path.join(root, 'storage'));
      await assert.rejects(
        prepareShared(root, { dirs: ['storage/uploads'], files: [] }, NOBODY),
        invalid('storage/uploads'),
      );
      await assert.rejects(stat(path.join(outside, 'uploads')), { code: 'ENOENT' });
    });
  });
  it('makes nothing outside, and takes nobody else’s directory, while the app swaps things in on the way', async () => {
    await withDirs(async ({ root, dir }) => {
      await chmod(dir, 0o711);
      const outside = path.join(dir, 'outside');
      await mkdir(outside);
      const shared = { dirs: ['data/sub/x', 'data/z'], files: ['data/sub/y.txt'] };
      await prepareShared(root, shared, NOBODY);
      // Another user's directory the app may move about (it owns data/) but must never own.
      const foreign = path.join(root, 'data', 'foreign');
      await mkdir(foreign);
      await chmod(foreign, 0o770);
      await chown(foreign, DAEMON, DAEMON);
      const foreignIno = (await stat(foreign)).ino;
      // The app (nobody) turns data/sub into a symlink out and back, and renames the other
      // user's directory in where data/z is being made, for 2 s.
      const swapper = spawn(
        'setpriv',
        [
          '--reuid',
          '65534',
          '--regid',
          '65534',
          '--clear-groups',
          '/usr/bin/python3',
          '-c',
          SWAPPER,
          outside,
        ],
        { cwd: path.join(root, 'data'), stdio: ['ignore', 'inherit', 'inherit'] },
      );
      const done = new Promise<number | null>((resolve) => swapper.on('exit', resolve));
      let running = true;
      void done.then(() => (running = false));
      let attempts = 0;
      while (running && attempts < 20_000) {
        attempts++;
        await prepareShared(root, shared, NOBODY).catch(invalid());
      }
      assert.equal(await done, 0, 'the swapper ran to its end');
      assert.ok(attempts > 0);
      assert.deepEqual(await readdir(outside), [], `made outside in ${attempts} attempts`);
      const found = await findIno(root, foreignIno);
      assert.ok(found, 'the other user’s directory is still there');
      assert.equal(found.uid, DAEMON, `still the other user's after ${attempts} attempts`);
      assert.equal(found.mode & 0o7777, 0o770);
    });
  });
});

const DAEMON = 1;

/** The entry under `dir` (not following links) with inode `ino`. */
async function findIno(dir: string, ino: number): Promise<Stats | undefined> {
  for (const name of await readdir(dir)) {
    const st = await lstat(path.join(dir, name));
    if (st.ino === ino) return st;
    if (st.isDirectory()) {
      const deeper = await findIno(path.join(dir, name), ino);
      if (deeper) return deeper;
    }
  }
  return undefined;
}

/**
 * Run as the app's user in its data/ directory: sub becomes a symlink out, then a dir again,
 * and the other user's directory 'foreign' is renamed to z for a moment (a rename may replace
 * the empty directory just made there), then back.
 */
const SWAPPER = `
import os, shutil, sys, time

def restore():
    if not os.path.lexists('foreign'):
        try:
            os.rename('z', 'foreign')
        except OSError:
            pass

def clear():
    restore()
    try:
        os.unlink('sub')
    except IsADirectoryError:
        shutil.rmtree('sub', ignore_errors=True)
    except FileNotFoundError:
        pass

end = time.monotonic() + 2
while time.monotonic() < end:
    clear()
    try:
        os.symlink(sys.argv[1], 'sub')
    except FileExistsError:
        continue
    clear()
    try:
        os.mkdir('sub')
    except FileExistsError:
        pass
    for _ in range(3):
        try:
            os.rename('foreign', 'z')
        except OSError:
            continue
        time.sleep(0.0005)
        restore()
restore()
`;

describe('prepareShared refuses what is on disk in the way', () => {
  it('accepts paths that exist as what they should be', async () => {
    await withDirs(async ({ root }) => {
      const shared = { dirs: ['storage/uploads'], files: ['app.env'] };
      await prepareShared(root, shared, NOBODY);
      await prepareShared(root, shared, NOBODY);
    });
  });

  it('refuses a symlink inside the root that points out (root/uploads -> /etc)', async () => {
    await withDirs(async ({ root }) => {
      await mkdir(root, { recursive: true });
      await symlink('/etc', path.join(root, 'uploads'));
      await assert.rejects(
        prepareShared(root, { dirs: ['uploads'], files: [] }, NOBODY),
        invalid('uploads', 'is a symlink: shared paths may not lead out'),
      );
      await assert.rejects(
        prepareShared(root, { dirs: [], files: ['uploads/passwd'] }, NOBODY),
        invalid('uploads/passwd'),
      );
    });
  });

  it('refuses a file where a dir is expected, and a dir where a file is', async () => {
    await withDirs(async ({ root }) => {
      await mkdir(path.join(root, 'cache'), { recursive: true });
      await writeFile(path.join(root, 'uploads'), '');
      for (const [shared, name] of [
        [{ dirs: ['uploads'], files: [] }, 'uploads'],
        [{ dirs: ['uploads/x'], files: [] }, 'uploads/x'],
        [{ dirs: [], files: ['cache'] }, 'cache'],
      ] as const)
        await assert.rejects(
          prepareShared(root, { dirs: [...shared.dirs], files: [...shared.files] }, NOBODY),
          invalid(name),
        );
    });
  });
});

describe('linkShared', () => {
  const shared = { dirs: ['storage/uploads', 'logs'], files: ['config/app.env'] };

  it('links each path to its absolute place in the root, idempotently', async () => {
    await withDirs(async ({ root, release }) => {
      await prepareShared(root, shared, NOBODY);
      await linkShared(release, root, shared);
      for (const p of ['storage/uploads', 'logs', 'config/app.env']) {
        const link = path.join(release, p);
        assert.ok((await lstat(link)).isSymbolicLink(), p);
        assert.equal(await readlink(link), path.join(root, p));
      }
      const before = await lstat(path.join(release, 'logs'));
      await linkShared(release, root, shared);
      const after = await lstat(path.join(release, 'logs'));
      assert.equal(after.ino, before.ino, 'a correct link is left in place');
    });
  });

  it('replaces what the artifact had at the place, a file or a full directory', async () => {
    await withDirs(async ({ root, release }) => {
      await prepareShared(root, shared, NOBODY);
      await mkdir(path.join(release, 'storage/uploads/nested'), { recursive: true });
      await writeFile(path.join(release, 'storage/uploads/nested/old.txt'), 'from the artifact');
      await writeFile(path.join(release, 'logs'), 'a file');
      await mkdir(path.join(release, 'config'));
      await symlink('/etc/hostname', path.join(release, 'config/app.env'));
      await linkShared(release, root, shared);
      for (const p of ['storage/uploads', 'logs', 'config/app.env'])
        assert.equal(await readlink(path.join(release, p)), path.join(root, p));
      assert.equal(
        (await stat('/etc/hostname')).isFile(),
        true,
        'the old link target is untouched',
      );
    });
  });

  it('keeps shared contents across releases and the pruning of a release', async () => {
    await withDirs(async ({ root, release, dir }) => {
      await prepareShared(root, shared, NOBODY);
      await linkShared(release, root, shared);
      await writeFile(path.join(release, 'storage/uploads/photo.jpg'), 'photo');
      await writeFile(path.join(release, 'config/app.env'), 'A=1\n');
      const next = path.join(dir, 'releases', 'r2');
      await mkdir(next);
      await linkShared(next, root, shared);
      assert.equal(await readFile(path.join(next, 'storage/uploads/photo.jpg'), 'utf8'), 'photo');
      await rm(release, { recursive: true, force: true });
      await rm(next, { recursive: true, force: true });
      assert.equal(await readFile(path.join(root, 'storage/uploads/photo.jpg'), 'utf8'), 'photo');
      assert.equal(await readFile(path.join(root, 'config/app.env'), 'utf8'), 'A=1\n');
    });
  });

  it('refuses a symlink inside the root that points out', async () => {
    await withDirs(async ({ root, release }) => {
      await mkdir(root, { recursive: true });
      await symlink('/etc', path.join(root, 'uploads'));
      await assert.rejects(
        linkShared(release, root, { dirs: ['uploads'], files: [] }),
        invalid('uploads'),
      );
      await assert.rejects(lstat(path.join(release, 'uploads')), { code: 'ENOENT' });
    });
  });

  it('refuses a symlink on the way inside the release, even one that stays inside', async () => {
    await withDirs(async ({ root, release, dir }) => {
      await prepareShared(root, shared, NOBODY);
      const elsewhere = path.join(dir, 'elsewhere');
      await mkdir(elsewhere);
      await symlink(elsewhere, path.join(release, 'storage'));
      await assert.rejects(linkShared(release, root, shared), invalid('storage/uploads'));
      await assert.rejects(lstat(path.join(elsewhere, 'uploads')), { code: 'ENOENT' });
      await rm(path.join(release, 'storage'));
      await mkdir(path.join(release, 'real'));
      await symlink('real', path.join(release, 'storage'));
      await assert.rejects(linkShared(release, root, shared), invalid('storage/uploads'));
    });
  });

  it('refuses a file in the release where a directory belongs', async () => {
    await withDirs(async ({ root, release }) => {
      await prepareShared(root, shared, NOBODY);
      await writeFile(path.join(release, 'storage'), 'a file');
      await assert.rejects(linkShared(release, root, shared), invalid('storage/uploads'));
    });
  });

  it('refuses a shared path not prepared yet', async () => {
    await withDirs(async ({ root, release }) => {
      await prepareShared(root, { dirs: ['logs'], files: [] }, NOBODY);
      await assert.rejects(
        linkShared(release, root, { dirs: ['logs', 'cache'], files: [] }),
        invalid('cache'),
      );
    });
  });
});
