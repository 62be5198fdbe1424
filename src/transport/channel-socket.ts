import { chmod, chown, lstat, mkdir, rm } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { BatonError, errorCode, errorMessage } from '../errors.js';

/** How long a socket found at the path gets to answer before it counts as stale. */
const PROBE_MS = 2000;

/**
 * The gid of `group` (a name, or a bare number as systemd allows), asked of the group database
 * through `lookup` (the agent's own lookup of app groups).
 */
export async function resolveSocketGroup(
  group: string,
  lookup: (name: string) => Promise<number | undefined>,
): Promise<number> {
  const gid = await lookup(group);
  if (gid !== undefined) return gid;
  if (/^\d+$/.test(group) && Number(group) < 2 ** 31) return Number(group);
  throw new BatonError(
    'GROUP_UNKNOWN',
    `channel.socketGroup: group "${group}" does not exist on this host: create it (groupadd --system ${group}), add the deploying SSH user to it, or remove socketGroup`,
  );
}

/**
 * Makes the socket's directory if missing (0755) and checks it: a directory others may write to
 * would let them replace the socket with their own, unless it is sticky and root's (as /tmp).
 */
async function checkParent(file: string): Promise<void> {
  const dir = path.dirname(file);
  await mkdir(dir, { recursive: true, mode: 0o755 });
  const st = await lstat(dir);
  const uid = process.getuid?.() ?? 0;
  const unsafe = (why: string) =>
    new BatonError(
      'CHANNEL_SOCKET_UNSAFE',
      `channel.socket ${file}: its directory ${dir} ${why}; use a directory only root writes to (the default /run/baton is made 0755)`,
    );
  if (!st.isDirectory()) throw unsafe('is not a directory');
  if (st.uid !== uid && st.uid !== 0) throw unsafe(`belongs to uid ${st.uid}`);
  const sticky = (st.mode & 0o1000) !== 0;
  if ((st.mode & 0o022) !== 0 && !(sticky && st.uid === 0))
    throw unsafe(`is writable by group or others (mode ${(st.mode & 0o7777).toString(8)})`);
}

/** Whether something accepts connections on the socket `file`. */
function answers(file: string): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect(file);
    const timer = setTimeout(() => done(true), PROBE_MS).unref();
    const done = (yes: boolean) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(yes);
    };
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}

/**
 * Readies `file` for binding: a safe directory, and no socket there unless a dead one (a crashed
 * agent's), which is removed. Refuses when another process answers on it.
 */
export async function prepareSocketPath(file: string): Promise<void> {
  await checkParent(file);
  const st = await lstat(file).catch((err: unknown) => {
    if (errorCode(err) === 'ENOENT') return undefined;
    throw err;
  });
  if (!st) return;
  if (!st.isSocket())
    throw new BatonError(
      'CHANNEL_SOCKET_UNSAFE',
      `channel.socket ${file} exists and is not a socket; remove it or choose another path`,
    );
  if (await answers(file))
    throw new BatonError(
      'CHANNEL_SOCKET_IN_USE',
      `channel.socket ${file}: another process (another baton agent?) answers on it; stop it, or give this agent another channel.socket`,
    );
  await rm(file, { force: true });
}

/**
 * Binds `server` to the socket `file`: created 0600 (umask) so no one else can open it before
 * its mode is set, then root:`gid` 0660 when a group is given.
 */
export async function listenOnSocket(
  server: net.Server,
  file: string,
  gid: number | undefined,
): Promise<void> {
  await prepareSocketPath(file);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      // The bind happens within listen() itself: the umask is restored in the same tick, before
      // any other file the agent creates could be made under it.
      const umask = process.umask(0o177);
      try {
        server.listen(file, () => {
          server.off('error', reject);
          resolve();
        });
      } finally {
        process.umask(umask);
      }
    });
  } catch (err) {
    throw new BatonError(
      'LISTENER_BIND_FAILED',
      `the channel cannot listen on ${file}: ${errorMessage(err)}`,
    );
  }
  if (gid !== undefined) {
    await chown(file, process.getuid?.() ?? 0, gid);
    await chmod(file, 0o660);
  } else await chmod(file, 0o600);
}
