import net from 'node:net';
import { WebSocket } from 'ws';
import { BatonError, errorCode, errorMessage } from '../errors.js';
import type { SshConnection, SshOptions } from './ssh.js';

export interface DialOptions {
  maxPayload: number;
}

/**
 * How a client reaches an agent: through SSH or directly. One interface so the deploy logic
 * never knows which; `open` may be called again after a drop (a reconnect).
 */
export interface Dialer {
  /** Where this goes, for messages: `deploy@web1:22 → /run/baton/channel.sock`. */
  readonly describe: string;
  open(opts: DialOptions): Promise<WebSocket>;
  close(): Promise<void>;
}

/**
 * A zero masking key. Masking protects browsers' neighbours from cache poisoning through
 * proxies that do not speak WebSocket; this client is no browser, and its frames travel inside
 * SSH or TLS (or loopback). With a zero key ws neither masks nor copies each frame here, nor
 * unmasks it at the agent: measured, half the client's CPU on a 1 GiB upload.
 */
const noMask = (mask: Buffer): void => {
  mask.fill(0);
};

/** Waits for a client WebSocket to open; its failure becomes a BatonError naming the target. */
function opened(ws: WebSocket, describe: string, code: 'CONNECTION_LOST' | 'SSH_FORWARD_FAILED') {
  return new Promise<WebSocket>((resolve, reject) => {
    const fail = (why: string) => {
      ws.terminate();
      reject(new BatonError(code, `cannot open the channel to ${describe}: ${why}`));
    };
    ws.once('open', () => {
      ws.off('error', onError);
      resolve(ws);
    });
    const onError = (err: Error) => fail(err.message);
    ws.once('error', onError);
    ws.once('unexpected-response', (_req, res) =>
      fail(`HTTP ${res.statusCode} instead of a WebSocket: is this a baton agent?`),
    );
  });
}

/** The coded error for a local socket that cannot be opened, saying what to do. */
function socketError(socketPath: string, err: unknown): BatonError {
  const code = errorCode(err);
  if (code === 'EACCES' || code === 'EPERM')
    return new BatonError(
      'CHANNEL_SOCKET_DENIED',
      `cannot open the agent's socket ${socketPath}: permission denied; only root and members of the agent's channel.socketGroup may (add this user to that group, or deploy as one)`,
    );
  return new BatonError(
    'CHANNEL_SOCKET_UNREACHABLE',
    `cannot open the agent's socket ${socketPath} (${errorMessage(err)}): is the baton agent running, with channel.socket set to this path?`,
  );
}

/**
 * `unix:/run/baton/channel.sock` (the agent's socket on this host), `ws://127.0.0.1:7701` or
 * `wss://host:port`: straight to the agent. For wss, `ca` pins the certificate authority (a
 * self-signed agent certificate, say); Node's own CAs otherwise.
 */
export function directDialer(
  url: string,
  opts: { ca?: string; connectTimeoutMs?: number } = {},
): Dialer {
  const handshakeTimeout = opts.connectTimeoutMs ?? 15_000;
  if (url.startsWith('unix:')) {
    const socketPath = url.slice('unix:'.length);
    if (!socketPath.startsWith('/'))
      throw new BatonError('USAGE', `--agent ${url}: expected unix:/absolute/path/to/channel.sock`);
    return {
      describe: socketPath,
      async open({ maxPayload }) {
        // Connected first, so that a missing or forbidden socket is told apart from the rest.
        const sock = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.connect(socketPath);
          s.once('connect', () => {
            s.off('error', reject);
            resolve(s);
          });
          s.once('error', (err) => reject(socketError(socketPath, err)));
        });
        return opened(
          new WebSocket('ws://localhost/', {
            maxPayload,
            perMessageDeflate: false,
            handshakeTimeout,
            createConnection: () => sock as never,
            generateMask: noMask,
          }),
          socketPath,
          'CONNECTION_LOST',
        );
      },
      close: () => Promise.resolve(),
    };
  }
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new BatonError(
      'USAGE',
      `--agent ${url}: not a URL; expected unix:/run/baton/channel.sock, ws://127.0.0.1:7701 or wss://host:port`,
    );
  }
  if (parsed.protocol !== 'ws:' && parsed.protocol !== 'wss:')
    throw new BatonError('USAGE', `--agent ${url}: expected unix:/path, ws:// or wss://`);
  const loopback = /^(127\.\d+\.\d+\.\d+|\[::1\]|localhost)$/.test(parsed.hostname);
  if (parsed.protocol === 'ws:' && !loopback)
    throw new BatonError(
      'USAGE',
      `--agent ${url}: plain ws:// is for loopback only; use wss:// or --host (SSH) to reach another machine`,
    );
  return {
    describe: url,
    open: ({ maxPayload }) =>
      opened(
        new WebSocket(url, {
          maxPayload,
          perMessageDeflate: false,
          handshakeTimeout,
          generateMask: noMask,
          ...(opts.ca !== undefined && { ca: opts.ca }),
        }),
        url,
        'CONNECTION_LOST',
      ),
    close: () => Promise.resolve(),
  };
}

/**
 * Through SSH to the agent: to its unix socket (`agent` a path: nothing on the host needs to be
 * open beyond SSH, and only users the socket admits get through) or to a TCP port on the host's
 * loopback (`agent` a number). The SSH connection is opened on first use and again whenever it
 * dropped.
 */
export function sshDialer(
  ssh: SshOptions,
  agent: string | number,
  agentHost = '127.0.0.1',
): Dialer {
  const describe = `${ssh.target} → ${typeof agent === 'string' ? agent : `${agentHost}:${agent}`}`;
  let conn: SshConnection | undefined;
  let dropped = false;
  const connect = async (): Promise<SshConnection> => {
    if (conn && !dropped) return conn;
    // Loaded on first use: an agent-side or direct command never pays for ssh2.
    const { openSsh } = await import('./ssh.js');
    const c = await openSsh(ssh);
    conn = c;
    dropped = false;
    void c.closed.then(() => {
      if (conn === c) dropped = true;
    });
    return c;
  };
  return {
    describe,
    async open({ maxPayload }) {
      const c = await connect();
      const stream =
        typeof agent === 'string' ? await c.forwardLocal(agent) : await c.forward(agentHost, agent);
      // The WebSocket speaks HTTP over the forwarded stream as if it were a TCP socket.
      const ws = new WebSocket(
        typeof agent === 'string' ? 'ws://localhost/' : `ws://${agentHost}:${agent}`,
        {
          maxPayload,
          perMessageDeflate: false,
          handshakeTimeout: 15_000,
          createConnection: () => stream as never,
          generateMask: noMask,
        },
      );
      return opened(ws, describe, 'SSH_FORWARD_FAILED').catch((err: unknown) => {
        stream.destroy();
        throw new BatonError('SSH_FORWARD_FAILED', errorMessage(err));
      });
    },
    async close() {
      const c = conn;
      conn = undefined;
      await c?.close();
    },
  };
}
