import { spawn } from 'node:child_process';
import { unlink } from 'node:fs/promises';
import net from 'node:net';
import { BatonError, errorMessage } from '../errors.js';
import type { ListenerConfig } from '../protocol/app-schema.js';

export { inheritedFds } from '../protocol/systemd.js';

/** A listening socket the agent holds for an app's whole life and never accepts on. */
export interface Listener {
  readonly name: string;
  readonly fd: number;
  readonly kind: 'tcp' | 'unix';
  /** `127.0.0.1:8080`, `[::1]:8080` or a socket path. */
  readonly address: string;
  /** The bound port (useful when the config asked for port 0). */
  readonly port: number | undefined;
  /** Where it came from: bound by this agent, or inherited (systemd or a predecessor agent). */
  readonly origin: 'bound' | 'inherited';
  /** Closes this process's copy; `keepPath` leaves a Unix socket's file for a successor that holds it too. */
  close(keepPath?: boolean): void;
}

/** The raw libuv handle that `net` wraps; only what we use of it. */
interface RawHandle {
  fd: number;
  close(): void;
  getsockname?(out: Record<string, unknown>): number;
}
type CreateServerHandle = (
  address: string | null,
  port: number | null,
  addressType: number | null,
  fd?: number,
  flags?: number,
) => RawHandle | number;

function createServerHandle(): CreateServerHandle {
  // Node's own cluster module binds this way without listening. It is internal, so check it.
  const fn = (net as unknown as { _createServerHandle?: CreateServerHandle })._createServerHandle;
  if (typeof fn !== 'function')
    throw new BatonError(
      'LISTEN_UNSUPPORTED',
      `this Node.js (${process.version}) lacks net._createServerHandle; run the agent under systemd socket activation (LISTEN_FDS) or use Node.js 20, 22 or 24`,
    );
  return fn;
}

const UV_EADDRINUSE = -98;
const UV_EACCES = -13;
const UV_EADDRNOTAVAIL = -99;

function bindError(cfg: ListenerConfig, where: string, errno: number): BatonError {
  if (errno === UV_EADDRINUSE)
    return new BatonError(
      'LISTENER_IN_USE',
      `listener "${cfg.name}" (${where}): address already in use; stop whatever holds it, or choose another address`,
    );
  const reason =
    errno === UV_EACCES
      ? 'permission denied (ports below 1024 need privileges)'
      : errno === UV_EADDRNOTAVAIL
        ? 'address not available on this host'
        : `errno ${errno}`;
  return new BatonError('LISTENER_BIND_FAILED', `listener "${cfg.name}" (${where}): ${reason}`);
}

/** How a configured listener reads in messages: `127.0.0.1:8080`, `[::1]:8080` or its path. */
export function describeListener(cfg: ListenerConfig): string {
  if (cfg.unix !== undefined) return cfg.unix;
  const tcp = cfg.tcp!;
  return tcp.family === 6 ? `[${tcp.host}]:${tcp.port}` : `${tcp.host}:${tcp.port}`;
}

function socketName(handle: RawHandle): { address?: string; port?: number; family?: string } {
  const out: Record<string, unknown> = {};
  if (typeof handle.getsockname === 'function' && handle.getsockname(out) === 0) return out;
  return {};
}

/**
 * Turns a bound socket into a listening one without this process ever accepting: a short-lived
 * child inherits the fd as its fd 3, calls listen(2) through `net`, and exits before its event
 * loop polls (both 'listening' and 'error' arrive on process.nextTick). Connections then wait in
 * the kernel queue until a generation accepts.
 */
async function listenInHelper(
  fd: number,
  backlog: number,
  where: string,
  name: string,
): Promise<void> {
  const script =
    "const s=require('net').createServer();" +
    "s.on('error',e=>{process.stderr.write(String(e.code||e.message));process.exit(1)});" +
    "s.on('listening',()=>process.exit(0));" +
    `s.listen({fd:3,backlog:${backlog}});`;
  const child = spawn(process.execPath, ['-e', script], {
    stdio: ['ignore', 'ignore', 'pipe', fd],
  });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d.slice(0, 500)));
  const code = await new Promise<number | null>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (c) => resolve(c));
  });
  if (code === 0) return;
  if (stderr.includes('EADDRINUSE'))
    throw new BatonError(
      'LISTENER_IN_USE',
      `listener "${name}" (${where}): address already in use; stop whatever holds it, or choose another address`,
    );
  throw new BatonError(
    'LISTENER_BIND_FAILED',
    `listener "${name}" (${where}): listen failed: ${stderr || `exit ${code}`}`,
  );
}

function makeListener(
  cfgName: string,
  handle: RawHandle,
  kind: 'tcp' | 'unix',
  fallbackAddress: string,
  origin: 'bound' | 'inherited',
  unixPath?: string,
): Listener {
  const sn = kind === 'tcp' ? socketName(handle) : {};
  const port = sn.port;
  const address =
    kind === 'tcp' && sn.address !== undefined
      ? sn.family === 'IPv6'
        ? `[${sn.address}]:${port}`
        : `${sn.address}:${port}`
      : fallbackAddress;
  let closed = false;
  return {
    name: cfgName,
    fd: handle.fd,
    kind,
    address,
    port,
    origin,
    close(keepPath = false) {
      if (closed) return;
      closed = true;
      handle.close();
      if (unixPath !== undefined && origin === 'bound' && !keepPath)
        unlink(unixPath).catch(() => undefined);
    },
  };
}

async function unixSocketIsStale(file: string): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect(file);
    sock.once('connect', () => {
      sock.destroy();
      resolve(false);
    });
    sock.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ECONNREFUSED'));
  });
}

/** Binds and listens on one configured listener. */
export async function openListener(cfg: ListenerConfig): Promise<Listener> {
  const create = createServerHandle();
  const where = describeListener(cfg);
  let handle: RawHandle | number;
  if (cfg.unix !== undefined) {
    handle = create(cfg.unix, -1, -1);
    // A socket file left by a dead process refuses connections: replace it. A live one is in use.
    if (handle === UV_EADDRINUSE && (await unixSocketIsStale(cfg.unix))) {
      await unlink(cfg.unix);
      handle = create(cfg.unix, -1, -1);
    }
  } else {
    const tcp = cfg.tcp!;
    handle = create(tcp.host, tcp.port, tcp.family);
  }
  if (typeof handle === 'number') throw bindError(cfg, where, handle);
  // libuv defers EADDRINUSE from bind(2) to listen(2), which happens in the helper on a fresh
  // handle that never hears of it: the kernel would then bind the socket to a random port.
  // An unbound socket shows port 0, so check here.
  if (cfg.tcp !== undefined && cfg.tcp.port !== 0 && socketName(handle).port !== cfg.tcp.port) {
    handle.close();
    throw bindError(cfg, where, UV_EADDRINUSE);
  }
  try {
    await listenInHelper(handle.fd, cfg.backlog, where, cfg.name);
  } catch (err) {
    handle.close();
    throw err;
  }
  return makeListener(
    cfg.name,
    handle,
    cfg.unix !== undefined ? 'unix' : 'tcp',
    where,
    'bound',
    cfg.unix,
  );
}

/** Wraps an inherited, already listening fd (systemd socket unit or predecessor agent). */
export function adoptListener(cfg: ListenerConfig, fd: number): Listener {
  const create = createServerHandle();
  const handle = create(null, null, null, fd);
  if (typeof handle === 'number')
    throw new BatonError(
      'LISTENER_ACTIVATION_MISMATCH',
      `inherited fd ${fd} for listener "${cfg.name}" is not a stream socket (errno ${handle}); check the socket unit`,
    );
  const listener = makeListener(
    cfg.name,
    handle,
    cfg.unix !== undefined ? 'unix' : 'tcp',
    describeListener(cfg),
    'inherited',
  );
  if (cfg.tcp !== undefined && listener.port === undefined)
    throw new BatonError(
      'LISTENER_ACTIVATION_MISMATCH',
      `inherited fd ${fd} named "${cfg.name}" is not a TCP socket but the config says tcp ${describeListener(cfg)}`,
    );
  if (cfg.tcp !== undefined && cfg.tcp.port !== 0 && listener.port !== cfg.tcp.port)
    throw new BatonError(
      'LISTENER_ACTIVATION_MISMATCH',
      `inherited fd ${fd} named "${cfg.name}" is bound to ${listener.address}, but the config says ${describeListener(cfg)}; make the socket unit and the config agree`,
    );
  return listener;
}

export function closeAll(listeners: Iterable<Listener>, keepPaths = false): void {
  for (const l of listeners) {
    try {
      l.close(keepPaths);
    } catch (err) {
      process.emitWarning(`closing listener ${l.name}: ${errorMessage(err)}`);
    }
  }
}
