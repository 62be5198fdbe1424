import { closeSync, writeSync } from 'node:fs';

/**
 * What the agent itself was started with (systemd's sockets, notify socket and watchdog; an
 * upgrade's pipe and predecessor): never an app's, which gets its own.
 */
export const ACTIVATION_ENV: readonly string[] = [
  'LISTEN_FDS',
  'LISTEN_FDNAMES',
  'LISTEN_PID',
  'NOTIFY_SOCKET',
  'WATCHDOG_USEC',
  'WATCHDOG_PID',
  'BATON_NOTIFY_FD',
  'BATON_PREDECESSOR_PID',
];

/**
 * Sockets handed to this process the systemd way: fds from 3, `LISTEN_FDS` of them, named by
 * `LISTEN_FDNAMES`, and only when `LISTEN_PID` (if set) is this process. Empty when there are none.
 */
export function inheritedFds(env: NodeJS.ProcessEnv = process.env): Map<string, number> {
  const fds = new Map<string, number>();
  const count = Number(env.LISTEN_FDS ?? 0);
  if (!Number.isInteger(count) || count <= 0) return fds;
  if (env.LISTEN_PID !== undefined && Number(env.LISTEN_PID) !== process.pid) return fds;
  const names = (env.LISTEN_FDNAMES ?? '').split(':');
  for (let i = 0; i < count; i++) fds.set(names[i] || `fd${3 + i}`, 3 + i);
  return fds;
}

/**
 * Says `READY=1\n` on the pipe fd named in `BATON_NOTIFY_FD` (how a generation, or an agent
 * started by `baton agent start` or an upgrade, tells its parent it is ready). Does nothing when
 * there is no such fd. Safe to call more than once.
 */
export function notifyReady(env: NodeJS.ProcessEnv = process.env): boolean {
  const fd = Number(env.BATON_NOTIFY_FD);
  if (!Number.isInteger(fd) || fd < 3) return false;
  try {
    writeSync(fd, 'READY=1\n');
    closeSync(fd);
  } catch {
    // Already told, or the parent is gone: either way there is nobody left to tell.
  }
  delete env.BATON_NOTIFY_FD;
  return true;
}
