import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, constants, openSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { BatonError } from '../errors.js';
import { activationEnv, ownPidScript } from './activation.js';
import type { AppConfig } from '../protocol/app-schema.js';
import type { Listener } from './listeners.js';
import type { LineMasker } from './log-tail.js';
import { NotifySocket, type NotifyMessage } from './notify-socket.js';
import { launchEnvironment } from './privilege.js';
import { childBaseEnv, resolveCommand } from './process-util.js';
import type { Release } from '../protocol/results.js';

/** How a generation's main process ended. */
export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/**
 * How a generation's processes are started: shell statements run first (umask, ulimits) and the
 * exec prefix that becomes the app's user. See privilege.ts.
 */
export interface Launch {
  setup: string;
  exec: string;
  /** Whether `exec` switches to the app's user (see launchEnvironment). */
  switchesUser: boolean;
  /** Environment added last: the env file, USER/HOME/LOGNAME of the app's user. */
  env: Record<string, string>;
  /** Who owns the generation's notify socket: the app's user. */
  owner: { uid: number; gid: number } | undefined;
  /** Where per-generation notify sockets go. */
  runDir: string;
  /** Masks the app's secrets in its output; asked at every line, as secrets are learnt. */
  masker?: () => LineMasker;
}

/**
 * A generation's output file. Truncated: a number reused after a lost state file must not
 * replay another process's lines. Append: when the tail cuts the file back, the app writes on at
 * the new end instead of at its old offset (which would leave a hole of NUL bytes as large as
 * the file was).
 */
export const LOG_FLAGS =
  constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_APPEND;

/** The script that starts the app as its user, with LISTEN_PID (and WATCHDOG_PID) its own pid. */
export function execScript(launch: Launch, watchdog: boolean): string {
  const pidVars = watchdog ? ['LISTEN_PID', 'WATCHDOG_PID'] : ['LISTEN_PID'];
  return ownPidScript(pidVars, launch.setup, launch.exec);
}

/** A loopback port free now, for a generation's private health check. */
export async function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

export async function checkReleaseDir(dir: string): Promise<void> {
  const info = await stat(dir).catch(() => undefined);
  if (!info?.isDirectory())
    throw new BatonError(
      'RELEASE_DIR_MISSING',
      `release directory ${dir} does not exist or is not a directory; deploy a release that is on this host`,
    );
}

/** What a generation is started from. */
export interface GenerationStart {
  app: AppConfig;
  number: number;
  release: Release;
  listeners: readonly Listener[];
  logDir: string;
  previousReleaseId: string | undefined;
  launch: Launch;
}

/** A generation's main process, just spawned, and what it was given. */
export interface Spawned {
  child: ChildProcess;
  /** Settles when the main process exits (listened for before anything could be missed). */
  childExit: Promise<Exit>;
  logFile: string;
  /** The private port of an `http` readiness check. */
  healthPort: number | undefined;
  /** The fd of the `notify` readiness pipe in the child (listeners come before it). */
  notifyFd: number;
  /** The per-generation `NOTIFY_SOCKET` of `systemd` readiness. */
  notify: NotifySocket | undefined;
  /** Hands the datagrams received so far, and every later one, to `handler`. */
  onNotify: (handler: (message: NotifyMessage) => void) => void;
}

/**
 * Spawns a generation's main process: through `/bin/sh` (umask, limits, the switch to the app's
 * user, LISTEN_PID), in the release directory, with the listeners from fd 3, its output to its
 * log file and the baton variables set.
 */
export async function spawnGeneration(opts: GenerationStart): Promise<Spawned> {
  const { app, number, release, listeners, launch } = opts;
  await checkReleaseDir(release.dir);
  const base = childBaseEnv(app.passEnv, launch);
  const appEnv = { ...app.env, ...launch.env };
  const executable = await resolveCommand(app.command[0]!, release.dir, appEnv.PATH ?? base.PATH);
  const env: Record<string, string> = {
    ...activationEnv(listeners.map((l) => l.name)),
    BATON_APP: app.name,
    BATON_RELEASE_ID: release.id,
    BATON_RELEASE_DIR: release.dir,
    BATON_GENERATION: String(number),
  };
  if (opts.previousReleaseId) env.BATON_PREVIOUS_RELEASE_ID = opts.previousReleaseId;
  const notifyFd = 3 + listeners.length;
  if (app.readiness.type === 'notify') env.BATON_NOTIFY_FD = String(notifyFd);
  const healthPort = app.readiness.type === 'http' ? await freeLoopbackPort() : undefined;
  if (healthPort !== undefined) env.BATON_HEALTH_PORT = String(healthPort);
  const watchdogMs = app.readiness.type === 'systemd' ? app.readiness.watchdogMs : undefined;
  if (watchdogMs !== undefined) env.WATCHDOG_USEC = String(watchdogMs * 1000);
  // Bound before the app starts, so its first datagram has somewhere to go; messages are
  // handled once the generation exists.
  const early: NotifyMessage[] = [];
  let deliver = (message: NotifyMessage): void => void early.push(message);
  const notify =
    app.readiness.type === 'systemd'
      ? await NotifySocket.open(launch.runDir, launch.owner, (m) => deliver(m))
      : undefined;
  if (notify) env.NOTIFY_SOCKET = notify.path;

  const logFile = path.join(opts.logDir, `${app.name}.gen-${number}.log`);
  let out: number;
  try {
    out = openSync(logFile, LOG_FLAGS, 0o640);
  } catch (err) {
    await notify?.close();
    throw err;
  }
  let child: ChildProcess;
  let childExit: Promise<Exit>;
  try {
    child = spawn(
      '/bin/sh',
      [
        '-c',
        execScript(launch, watchdogMs !== undefined),
        app.name,
        executable,
        ...app.command.slice(1),
      ],
      {
        cwd: release.dir,
        env: launchEnvironment(launch, base, appEnv, env),
        detached: true,
        stdio: [
          'ignore',
          out,
          out,
          ...listeners.map((l) => l.fd),
          app.readiness.type === 'notify' ? 'pipe' : 'ignore',
        ],
      },
    );
    // Listen for the exit before any await: an app that dies at once must not go unseen.
    // 'exit', not 'close': output goes to a file and the notify pipe may be held open by a
    // process the app forked; the main process's death is what matters here.
    childExit = new Promise<Exit>((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }));
    });
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve);
      child.once('error', reject);
    });
  } catch (err) {
    await notify?.close();
    throw err;
  } finally {
    closeSync(out);
  }
  return {
    child,
    childExit,
    logFile,
    healthPort,
    notifyFd,
    notify,
    onNotify: (handler) => {
      deliver = handler;
      for (const m of early.splice(0)) handler(m);
    },
  };
}
