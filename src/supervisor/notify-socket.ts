import { randomBytes } from 'node:crypto';
import { chmod, chown, mkdir, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { BatonError, errorMessage } from '../errors.js';
import { withoutControls } from './env-file.js';

/**
 * systemd's notify protocol on the receiving side: a unix datagram socket per generation, whose
 * path the app finds in `NOTIFY_SOCKET`. Node has no unix datagram sockets, so this needs the
 * optional package node-unix-socket (prebuilt binaries inside per-platform npm packages; see
 * docs/systemd.md for which ones are served). Where it cannot load, only the `systemd` readiness type is unavailable.
 */

/** What one datagram said; unknown assignments (FDSTORE=, BUSERROR=, …) are left out. */
export interface NotifyMessage {
  ready: boolean;
  stopping: boolean;
  reloading: boolean;
  status: string | undefined;
  mainPid: number | undefined;
  extendTimeoutUsec: number | undefined;
  /** `WATCHDOG=1` pings; `WATCHDOG=trigger` asks to be treated as a missed ping at once. */
  watchdog: 'ping' | 'trigger' | undefined;
  /** The assignments understood, as sent (cleaned), for the deploy stream. */
  lines: string[];
}

/** systemd reads at most this much of a datagram (NOTIFY_BUFFER_MAX is PIPE_BUF). */
const MAX_DATAGRAM = 4096;
/** The longest STATUS= shown in `baton agent status`, cut after secrets are masked. */
export const MAX_STATUS = 512;

function positiveInt(value: string): number | undefined {
  if (!/^\d{1,16}$/.test(value)) return undefined;
  const n = Number(value);
  return Number.isSafeInteger(n) && n > 0 ? n : undefined;
}

/** Newline-separated `KEY=VALUE` assignments, as sd_notify(3) sends them. */
export function parseNotifyMessage(datagram: Buffer): NotifyMessage {
  const message: NotifyMessage = {
    ready: false,
    stopping: false,
    reloading: false,
    status: undefined,
    mainPid: undefined,
    extendTimeoutUsec: undefined,
    watchdog: undefined,
    lines: [],
  };
  const text = datagram.subarray(0, MAX_DATAGRAM).toString('utf8');
  for (const line of text.split('\n')) {
    const eq = line.indexOf('=');
    if (eq <= 0) continue;
    const key = line.slice(0, eq);
    const value = line.slice(eq + 1);
    let understood = true;
    if (key === 'READY' && value === '1') message.ready = true;
    else if (key === 'STOPPING' && value === '1') message.stopping = true;
    else if (key === 'RELOADING' && value === '1') message.reloading = true;
    // Control characters would let an app forge lines in the deploy stream.
    // Not cut here: a secret across the cut would not be found whole to be masked.
    else if (key === 'STATUS') message.status = withoutControls(value);
    else if (key === 'MAINPID' && positiveInt(value)) message.mainPid = positiveInt(value);
    else if (key === 'EXTEND_TIMEOUT_USEC' && positiveInt(value))
      message.extendTimeoutUsec = positiveInt(value);
    else if (key === 'WATCHDOG' && (value === '1' || value === 'trigger'))
      message.watchdog = value === '1' ? 'ping' : 'trigger';
    else understood = false;
    if (understood && key !== 'WATCHDOG')
      message.lines.push(key === 'STATUS' ? `STATUS=${message.status}` : `${key}=${value}`);
  }
  return message;
}

interface DgramSocket {
  on(event: 'data', fn: (data: Buffer) => void): void;
  on(event: 'error', fn: (err: Error) => void): void;
  bind(socketPath: string): void;
  sendTo(
    buf: Buffer,
    offset: number,
    length: number,
    destPath: string,
    onWrite?: (err: Error | undefined) => void,
  ): void;
  close(): void;
}
type DgramModule = { DgramSocket: new () => DgramSocket };

let loaded: DgramModule | Error | undefined;

function loadDgram(): DgramModule | Error {
  if (loaded === undefined) {
    try {
      loaded = createRequire(import.meta.url)('node-unix-socket') as DgramModule;
    } catch (err) {
      loaded = err instanceof Error ? err : new Error(String(err));
    }
  }
  return loaded;
}

/** Undefined when the systemd notify protocol can be served here, else why not and what to do. */
export function notifyUnavailable(): string | undefined {
  const mod = loadDgram();
  if (!(mod instanceof Error)) return undefined;
  return (
    `readiness type "systemd" needs unix datagram sockets, which Node lacks, from the optional ` +
    `npm package node-unix-socket, and it did not load (${errorMessage(mod).split('\n')[0]}). ` +
    `Install it beside baton (npm install node-unix-socket; it ships prebuilt binaries in npm ` +
    `packages, one per platform), or use readiness type "notify" (READY=1 on the pipe in ` +
    `BATON_NOTIFY_FD), "http" or "delay"`
  );
}

/** Sends one datagram to a socket path; false when node-unix-socket is not there to send it. */
export async function sendDatagram(socketPath: string, text: string): Promise<boolean> {
  const mod = loadDgram();
  if (mod instanceof Error) return false;
  const socket = new mod.DgramSocket();
  socket.on('error', () => undefined);
  const data = Buffer.from(text);
  try {
    await new Promise<void>((resolve, reject) =>
      socket.sendTo(data, 0, data.length, socketPath, (err) => (err ? reject(err) : resolve())),
    );
  } finally {
    socket.close();
  }
  return true;
}

/** sockaddr_un holds 108 bytes, the terminating NUL among them. */
const MAX_SOCKET_PATH = 107;

/**
 * One generation's `NOTIFY_SOCKET`: `<runDir>/<random>/notify`. The socket is 0600 and owned by
 * the app's user, so only that user (and root) can send to it, and its directory's name is fresh
 * per generation, so a message can only come from whoever holds this generation's environment.
 * The directory stays the agent's (0710, the app's group may only pass through): were it the
 * app's, the app could swap a symlink in for the socket between bind and chown, and have the
 * agent hand it any file on the host.
 */
export class NotifySocket {
  private constructor(
    readonly path: string,
    private readonly socket: DgramSocket,
  ) {}

  static async open(
    runDir: string,
    owner: { uid: number; gid: number } | undefined,
    onMessage: (message: NotifyMessage) => void,
    reuse?: string,
  ): Promise<NotifySocket> {
    const mod = loadDgram();
    const unavailable = notifyUnavailable();
    if (mod instanceof Error || unavailable !== undefined)
      throw new BatonError('NOTIFY_UNAVAILABLE', unavailable ?? 'node-unix-socket did not load');
    const dir = reuse ? path.dirname(reuse) : path.join(runDir, randomBytes(8).toString('hex'));
    const file = reuse ?? path.join(dir, 'notify');
    if (Buffer.byteLength(file) > MAX_SOCKET_PATH)
      throw new BatonError(
        'NOTIFY_UNAVAILABLE',
        `the notify socket path ${file} is longer than the ${MAX_SOCKET_PATH} bytes a unix socket address holds; use a shorter stateDir`,
      );
    await mkdir(runDir, { recursive: true, mode: 0o711 });
    await mkdir(dir, { recursive: true, mode: 0o700 });
    // Taken back first when reused: an agent before this one gave the directory to the app.
    if (owner) await chown(dir, process.getuid?.() ?? 0, owner.gid);
    await chmod(dir, owner ? 0o710 : 0o700);
    await rm(file, { force: true });
    const socket = new mod.DgramSocket();
    socket.on('error', () => undefined);
    socket.on('data', (data: Buffer) => onMessage(parseNotifyMessage(data)));
    try {
      socket.bind(file);
      await chmod(file, 0o600);
      if (owner) await chown(file, owner.uid, owner.gid);
    } catch (err) {
      socket.close();
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
    return new NotifySocket(file, socket);
  }

  /** Stops listening; `remove` also deletes the socket's directory (not when a successor agent takes it over). */
  async close(remove = true): Promise<void> {
    try {
      this.socket.close();
    } catch {
      // Already closed.
    }
    if (remove) await rm(path.dirname(this.path), { recursive: true, force: true });
  }
}
