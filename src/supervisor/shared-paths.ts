import { randomBytes } from 'node:crypto';
import { constants, type Stats } from 'node:fs';
import {
  type FileHandle,
  lstat,
  mkdir,
  open,
  readdir,
  readlink,
  realpath,
  rename,
  rm,
  stat,
  symlink,
  unlink,
} from 'node:fs/promises';
import path from 'node:path';
import { BatonError, errorMessage } from '../errors.js';
import type { AppConfig } from '../protocol/app-schema.js';

type Shared = AppConfig['shared'];
type Kind = 'dir' | 'file';

const DIR_MODE = 0o750;
const FILE_MODE = 0o640;

/** Where an app's shared dirs and files live: `<stateDir>/apps/<app>/shared`. */
export function sharedRoot(stateDir: string, app: string): string {
  return path.join(stateDir, 'apps', app, 'shared');
}

function invalid(p: string, what: string): BatonError {
  return new BatonError('SHARED_PATH_INVALID', `shared path "${p}": ${what}`);
}

function entries(shared: Shared): { p: string; kind: Kind; parts: string[] }[] {
  return [
    ...shared.dirs.map((p) => ({ p, kind: 'dir' as const })),
    ...shared.files.map((p) => ({ p, kind: 'file' as const })),
  ].map(({ p, kind }) => {
    const parts = p.split('/').filter((part) => part !== '');
    // The config schema already refuses these; a second look costs nothing.
    if (p.startsWith('/') || !parts.length || parts.some((part) => part === '.' || part === '..'))
      throw invalid(p, 'must be relative, without "." or ".." parts');
    return { p, kind, parts };
  });
}

async function lstatOrUndefined(file: string): Promise<Stats | undefined> {
  try {
    return await lstat(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/**
 * Walks `parts` down from `root` without following links. Returns how many of them exist; throws
 * at a symlink, at a non-directory on the way, or at an end of the wrong kind.
 */
async function existingParts(
  root: string,
  entry: { p: string; kind: Kind; parts: string[] },
): Promise<number> {
  const { p, kind, parts } = entry;
  for (let i = 0; i < parts.length; i++) {
    const at = path.join(root, ...parts.slice(0, i + 1));
    let st: Stats | undefined;
    try {
      st = await lstatOrUndefined(at);
    } catch (err) {
      throw invalid(p, `cannot inspect ${at}: ${errorMessage(err)}`);
    }
    if (st === undefined) return i;
    const last = i === parts.length - 1;
    if (st.isSymbolicLink())
      throw invalid(
        p,
        `${at} is a symlink: shared paths may not lead out of ${root}; replace it with a ${last ? kind : 'directory'}`,
      );
    const wanted = last ? kind : 'dir';
    if (wanted === 'dir' ? !st.isDirectory() : !st.isFile())
      throw invalid(
        p,
        `${at} is not a ${wanted === 'dir' ? 'directory' : 'regular file'}: move it away or list it under shared.${wanted === 'dir' ? 'files' : 'dirs'}`,
      );
  }
  return parts.length;
}

async function checkRoot(root: string): Promise<boolean> {
  let st: Stats;
  try {
    st = await stat(root);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw new BatonError('SHARED_PATH_INVALID', `cannot inspect ${root}: ${errorMessage(err)}`);
  }
  if (!st.isDirectory())
    throw new BatonError(
      'SHARED_PATH_INVALID',
      `${root} is not a directory: it holds the app's shared paths; move it away`,
    );
  return true;
}

/**
 * Creates what is missing of the shared paths (directories, and empty files), directories on the
 * way included, owned by `owner` when given, directories 0750 and files 0640. What exists is left
 * as it is, contents, owner and mode alike. `root` itself, when missing, is created 0755 and
 * owned by the agent.
 */
export async function prepareShared(
  root: string,
  shared: Shared,
  owner: { uid: number; gid: number } | undefined,
): Promise<void> {
  const list = entries(shared);
  if (!(await checkRoot(root))) {
    await mkdir(root, { recursive: true, mode: 0o755 });
    const handle = await open(root, constants.O_RDONLY | constants.O_DIRECTORY);
    try {
      await handle.chmod(0o755);
    } finally {
      await handle.close();
    }
  }
  for (const entry of list) {
    const existing = await existingParts(root, entry);
    if (existing === entry.parts.length) continue;
    // Directories under the root may be the app's (made for it here), and it may swap a symlink
    // or another directory in at any moment: nothing below the root is reached by a path, only
    // through the directory opened before it (/proc/self/fd/N/name resolves the last part in
    // that very directory), nothing is followed, and a directory made is used through the fd
    // that checked it. So the agent makes and hands over entries only in directories it made or
    // the app owns (one the app moved out of the root is still its own), never elsewhere.
    let dir = await openDir(entry.p, root, false);
    try {
      for (let i = 0; ; i++) {
        const kind = i === entry.parts.length - 1 ? entry.kind : 'dir';
        const at = path.join(root, ...entry.parts.slice(0, i + 1));
        const inDir = `/proc/self/fd/${dir.fd}/${entry.parts[i]!}`;
        if (i === entry.parts.length - 1) {
          if (i >= existing) await (await createOwned(entry.p, at, inDir, kind, owner)).close();
          break;
        }
        const next =
          i >= existing
            ? await createOwned(entry.p, at, inDir, kind, owner)
            : await openDir(entry.p, inDir, true, at);
        await dir.close();
        dir = next;
      }
    } finally {
      await dir.close();
    }
  }
}

/** Opens a directory; with `noFollow`, refusing a symlink in its last part. */
async function openDir(p: string, at: string, noFollow: boolean, shown = at): Promise<FileHandle> {
  try {
    return await open(
      at,
      constants.O_RDONLY | constants.O_DIRECTORY | (noFollow ? constants.O_NOFOLLOW : 0),
    );
  } catch (err) {
    throw invalid(
      p,
      `cannot open ${shown}: ${errorMessage(err)}; was it replaced while being prepared?`,
    );
  }
}

/**
 * Creates one entry at `inDir` (a name inside a directory opened by fd; `at` is how it is shown),
 * hands it to `owner`, changed only by fd, and returns that fd open. A symlink raced in at the
 * name makes the creation fail (mkdir and O_EXCL do not follow one); a directory swapped in
 * between mkdir and open (mkdir gives no fd) is refused unless it is the empty one just made,
 * so nobody else's directory is ever handed to the app.
 */
async function createOwned(
  p: string,
  at: string,
  inDir: string,
  kind: Kind,
  owner: { uid: number; gid: number } | undefined,
): Promise<FileHandle> {
  let handle: FileHandle;
  try {
    if (kind === 'dir') {
      await mkdir(inDir, { mode: DIR_MODE });
      handle = await open(inDir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
    } else {
      handle = await open(
        inDir,
        constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
        FILE_MODE,
      );
    }
  } catch (err) {
    throw invalid(p, `cannot create ${at}: ${errorMessage(err)}`);
  }
  try {
    if (kind === 'dir') {
      const st = await handle.stat();
      // Just made by this process and still empty: its own, with no entry but . and ..
      if (
        st.uid !== process.geteuid!() ||
        st.nlink !== 2 ||
        (await readdir(`/proc/self/fd/${handle.fd}`)).length > 0
      )
        throw invalid(p, `${at} was replaced while being created; prepare again`);
    }
    await handle.chmod(kind === 'dir' ? DIR_MODE : FILE_MODE);
    if (owner !== undefined) await handle.chown(owner.uid, owner.gid);
    return handle;
  } catch (err) {
    await handle.close();
    throw err;
  }
}

/**
 * Links each shared path into `releaseDir` as a symlink to its absolute place under `root`,
 * replacing whatever the artifact had there without following links; a correct link is left.
 * Directories on the way are created inside the release; a symlink or a file on the way is
 * refused, as is a shared path missing from `root` (prepareShared creates them).
 */
export async function linkShared(releaseDir: string, root: string, shared: Shared): Promise<void> {
  const list = entries(shared);
  if (!(await checkRoot(root)) && list.length)
    throw new BatonError(
      'SHARED_PATH_INVALID',
      `${root} does not exist: the app's shared paths are prepared before linking`,
    );
  const absRoot = path.resolve(root);
  const realRelease = await realpath(releaseDir);
  for (const entry of list) {
    const { p, parts } = entry;
    if ((await existingParts(root, entry)) < parts.length)
      throw invalid(p, `missing from ${root}: the app's shared paths are prepared before linking`);

    let parent = releaseDir;
    for (const part of parts.slice(0, -1)) {
      parent = path.join(parent, part);
      const st = await lstatOrUndefined(parent);
      if (st === undefined) await mkdir(parent);
      else if (st.isSymbolicLink())
        throw invalid(
          p,
          `the release has a symlink at ${parent}: a shared path may not go through one`,
        );
      else if (!st.isDirectory())
        throw invalid(p, `the release has a file at ${parent} where a directory belongs`);
    }
    const realParent = await realpath(parent);
    if (realParent !== realRelease && !realParent.startsWith(`${realRelease}${path.sep}`))
      throw invalid(p, `${parent} resolves to ${realParent}, outside the release`);

    const link = path.join(parent, parts.at(-1)!);
    const target = path.join(absRoot, ...parts);
    const st = await lstatOrUndefined(link);
    if (st?.isSymbolicLink() && (await readlink(link)) === target) continue;
    const tmp = `${link}.baton-link-${randomBytes(6).toString('hex')}`;
    await symlink(target, tmp);
    try {
      // rename cannot replace a directory with a link; rm does not follow links inside it.
      if (st?.isDirectory()) await rm(link, { recursive: true, force: true });
      await rename(tmp, link);
    } catch (err) {
      await unlink(tmp).catch(() => undefined);
      throw invalid(p, `cannot link ${link}: ${errorMessage(err)}`);
    }
  }
}
