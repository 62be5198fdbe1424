import { getCiphers } from 'node:crypto';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import ssh2, { type Algorithms, type ClientChannel, type ParsedKey } from 'ssh2';
import type { AgentAuthMethod, Client as SshClient, PublicKeyAuthMethod } from 'ssh2';
import { BatonError, errorMessage } from '../errors.js';
import * as hostKeys from './known-hosts.js';
import { parseSshTarget, type SshTarget } from './ssh-target.js';

export { parseSshTarget, type SshTarget };

// ssh2 is CommonJS and Node's ESM loader finds only some of its named exports (not `utils`).
const { Client, utils } = ssh2;

/** How to open an SSH connection to the agent's host. */
export interface SshOptions {
  /** `user@host[:port]` of the server. */
  target: string;
  /** ProxyJump chain, first hop first, each `user@host[:port]`; every hop's key is checked. */
  jump?: readonly string[];
  /**
   * An OpenSSH, PEM or PPK private key (the contents, not a path), or one `readPrivateKey` read
   * already: a fleet decrypts its key once, not once a host.
   */
  privateKey?: string | Buffer | ParsedKey;
  /** The private key's passphrase, when it is encrypted. */
  passphrase?: string;
  /** An ssh-agent socket path (SSH_AUTH_SOCK) to authenticate with. */
  agent?: string;
  /** known_hosts text or lines; checked for every hop. */
  knownHosts?: string | readonly string[];
  /** The target's pinned `SHA256:…` host key fingerprint (jump hosts go by `knownHosts`). */
  fingerprint?: string;
  /** Trust a host key nothing vouches for. Never overrides a mismatch or a revoked key. */
  acceptUnknownHostKey?: boolean;
  /** Limit on TCP connect + SSH handshake + login per hop, and on opening a forward. 15000. */
  connectTimeoutMs?: number;
  /** SSH keepalive period. Default 10000; 0 disables. */
  keepaliveIntervalMs?: number;
  /** Unanswered keepalives before the connection counts as dropped. Default 3. */
  keepaliveCountMax?: number;
  /** Attempts after the first when the network failed (never for keys). Default 2. */
  retries?: number;
  /** First backoff between attempts; it doubles each time. Default 500. */
  retryBaseMs?: number;
  /** Receives one line per retry and per blindly trusted host key. */
  log?: (line: string) => void;
}

/** An open, authenticated SSH connection (through its jump hosts). */
export interface SshConnection {
  /**
   * A TCP stream to `host:port` as seen from the server (`direct-tcpip`, like `ssh -L`).
   * @throws BatonError `SSH_FORWARD_FAILED` when the server cannot or will not connect.
   */
  forward(host: string, port: number): Promise<Duplex>;
  /**
   * A stream to the unix socket `socketPath` on the server (`direct-streamlocal@openssh.com`,
   * like `ssh -L port:/path`), opened as the SSH user.
   * @throws BatonError `CHANNEL_SOCKET_UNREACHABLE` when the server cannot or will not open it.
   */
  forwardLocal(socketPath: string): Promise<Duplex>;
  /** Ends every hop, last first, and resolves once all are closed. */
  close(): Promise<void>;
  /**
   * Settles once every hop is closed: with undefined after `close()`, with a
   * `CONNECTION_LOST` error when the connection dropped. Never rejects.
   */
  readonly closed: Promise<BatonError | undefined>;
}

/**
 * Connects (retrying network failures with exponential backoff), checks every hop's host key
 * and logs in with the private key and/or the agent.
 * @throws BatonError `SSH_HOST_KEY_UNKNOWN`, `SSH_HOST_KEY_MISMATCH`, `SSH_AUTH_FAILED`,
 * `SSH_KEY_INVALID`, `SSH_CONNECT_FAILED` or `USAGE`.
 */
export async function openSsh(opts: SshOptions): Promise<SshConnection> {
  const targets = [...(opts.jump ?? []).map(parseSshTarget), parseSshTarget(opts.target)];
  if (opts.privateKey === undefined && opts.agent === undefined)
    throw new BatonError('USAGE', 'SSH needs a private key or an ssh-agent socket to log in');
  // Parsed once: decrypting a key runs bcrypt, a good half second, which every hop would redo.
  const raw = opts.privateKey;
  const key =
    typeof raw === 'string' || Buffer.isBuffer(raw) ? readPrivateKey(raw, opts.passphrase) : raw;
  if (opts.fingerprint !== undefined) hostKeys.normalizeFingerprint(opts.fingerprint);
  const retries = opts.retries ?? 2;
  for (let attempt = 0; ; attempt++) {
    try {
      return connection(await connectChain(targets, opts, key), opts);
    } catch (err) {
      if (!(err instanceof BatonError) || !retryable.has(err) || attempt >= retries) throw err;
      const delay = (opts.retryBaseMs ?? 500) * 2 ** attempt;
      opts.log?.(`ssh: ${err.message}; retry ${attempt + 1} of ${retries} in ${delay} ms`);
      // Not unref'd: the caller is waiting for this attempt, so it must hold the process up.
      await sleep(delay);
    }
  }
}

/** Failures worth another attempt: the network's, never a key's or a configuration's. */
const retryable = new WeakSet<BatonError>();
const RETRYABLE_SOCKET_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'EAI_AGAIN',
]);
/** How long a hop gets to close politely before its transport is destroyed. */
const CLOSE_GRACE_MS = 2000;

/** Fast ciphers first: artifacts of a gigabyte go through this, and AES-GCM runs on AES-NI. */
const CIPHERS = Object.entries({
  'aes128-gcm@openssh.com': 'aes-128-gcm',
  'aes256-gcm@openssh.com': 'aes-256-gcm',
  'chacha20-poly1305@openssh.com': 'chacha20',
  'aes128-ctr': 'aes-128-ctr',
  'aes192-ctr': 'aes-192-ctr',
  'aes256-ctr': 'aes-256-ctr',
})
  // As ssh2 does for its defaults: naming a cipher this Node's OpenSSL lacks would throw.
  .filter(([, openssl]) => getCiphers().includes(openssl))
  .map(([name]) => name) as Algorithms['cipher'];

interface Hop {
  client: SshClient;
  /** `host` or `[host]:port`, as known_hosts and messages name it. */
  name: string;
  /** Resolves when the hop's transport has closed. */
  gone: Promise<void>;
  lastError: Error | undefined;
}

function connectFailed(message: string, retry: boolean): BatonError {
  const err = new BatonError('SSH_CONNECT_FAILED', message);
  if (retry) retryable.add(err);
  return err;
}

/** Logs in to each hop through a channel the previous one opens (ProxyJump). */
async function connectChain(
  targets: SshTarget[],
  opts: SshOptions,
  key: ParsedKey | undefined,
): Promise<Hop[]> {
  const hops: Hop[] = [];
  let sock: Duplex | undefined;
  try {
    for (const [i, target] of targets.entries()) {
      const via = await connectHop(target, sock, opts, key, i === targets.length - 1);
      hops.push(via);
      const next = targets[i + 1];
      if (next === undefined) return hops;
      sock = await openChannel(via.client, next.host, next.port, opts).catch((err: unknown) => {
        const reason = (err as { reason?: unknown }).reason;
        const to = hostKeys.hostEntryName(next.host, next.port);
        // Channel open reasons 2 (connect failed) and 4 (resource shortage) may pass.
        const retry = reason === 2 || reason === 4 || reason === undefined;
        throw connectFailed(`${via.name} could not reach ${to}: ${errorMessage(err)}`, retry);
      });
    }
    return hops;
  } catch (err) {
    sock?.destroy();
    await shutdown(hops);
    throw err;
  }
}

/**
 * ssh2 writes each SSH packet (at most 32 KiB of channel data) to the socket on its own: a
 * system call and a pass through the stream machinery each. Corked for the rest of the tick,
 * the packets written in one go leave in one `writev`. Measured in bench:fleet (5 MiB to 10
 * hosts): the kernel's share of the action's CPU fell from about 33 to 27 ms a host.
 */
function batchedWrites(socket: net.Socket): net.Socket {
  const write = socket.write.bind(socket) as (...args: unknown[]) => boolean;
  socket.write = (...args: unknown[]) => {
    if (!socket.writableCorked) {
      socket.cork();
      process.nextTick(() => socket.uncork());
    }
    return write(...args);
  };
  return socket;
}

/** Logs in to one hop, over `sock` when a jump host carries it. */
function connectHop(
  target: SshTarget,
  sock: Duplex | undefined,
  opts: SshOptions,
  key: ParsedKey | undefined,
  last: boolean,
) {
  const { username, host, port } = target;
  const name = hostKeys.hostEntryName(host, port);
  const timeoutMs = opts.connectTimeoutMs ?? 15_000;
  const client = new Client();
  const gone = new Promise<void>((resolve) => client.once('close', () => resolve()));
  const hop: Hop = { client, name, gone, lastError: undefined };
  return new Promise<Hop>((resolve, reject) => {
    let settled = false;
    let handshaken = false;
    let refusal: BatonError | undefined;
    const agentErrors: string[] = [];
    let started = false;
    const fail = (err: BatonError) => {
      if (settled) return;
      settled = true;
      client.destroy();
      // Rejected once the socket is closed, so that a failed attempt leaves no handle behind.
      if (started) void within(gone, CLOSE_GRACE_MS).then(() => reject(err));
      else reject(err);
    };
    const authFailed = (why: string) =>
      new BatonError(
        'SSH_AUTH_FAILED',
        `${username}@${name} refused every key offered (${[why, ...agentErrors].join('; ')}): ` +
          `is the public key in ${username}'s ~/.ssh/authorized_keys on that host?`,
      );
    client.once('handshake', () => (handshaken = true));
    client.once('ready', () => {
      settled = true;
      resolve(hop);
    });
    // Stays attached for the connection's life: an 'error' without a listener would crash.
    client.on('error', (err: Error & { level?: string; code?: unknown }) => {
      hop.lastError = err;
      if (settled) return;
      if (refusal) return fail(refusal);
      // ssh2 reports a broken agent, then goes on with the next method: wait for the outcome.
      if (err.level === 'agent') return void agentErrors.push(`agent: ${err.message}`);
      // A numeric code is the server's DISCONNECT reason; after the handshake, it ends a login.
      if (err.level === 'client-authentication' || (handshaken && typeof err.code === 'number'))
        return fail(authFailed(err.message));
      if (err.level === 'client-timeout')
        return fail(connectFailed(`${name} did not complete SSH login in ${timeoutMs} ms`, true));
      const retry = typeof err.code === 'string' && RETRYABLE_SOCKET_CODES.has(err.code);
      fail(connectFailed(`SSH to ${name} failed: ${err.message}`, retry));
    });
    client.once('close', () => {
      // Closed before the banner: an overloaded sshd (MaxStartups) does that; worth a retry.
      const why = `${name} closed the connection before SSH login completed`;
      fail(refusal ?? connectFailed(why, !handshaken));
    });
    const hostVerifier = (key: Buffer): boolean => {
      refusal = hostKeyRefusal(key, target, opts, last);
      return refusal === undefined;
    };
    const serverHostKey = hostKeys.hostKeyAlgorithms(opts.knownHosts ?? [], host, port);
    try {
      started = true;
      client.connect({
        host,
        port,
        username,
        // The first hop's TCP socket is ours, so that its writes go out batched (see below).
        sock: (sock ??= batchedWrites(net.connect({ host, port }))),
        hostVerifier,
        authHandler: logins(username, key, opts.agent),
        // ssh2 starts this before the TCP connect, so it bounds the connect as well.
        readyTimeout: timeoutMs,
        keepaliveInterval: opts.keepaliveIntervalMs ?? 10_000,
        keepaliveCountMax: opts.keepaliveCountMax ?? 3,
        algorithms: {
          cipher: CIPHERS,
          serverHostKey: serverHostKey as Algorithms['serverHostKey'],
        },
      });
    } catch (err) {
      started = false;
      // Ours or the jump host's: nothing else will close it now.
      sock?.destroy();
      fail(connectFailed(`SSH to ${name} could not start: ${errorMessage(err)}`, false));
    }
  });
}

/** The key first, then the agent: ssh2's own default would try 'none' and passwords. */
function logins(username: string, key: ParsedKey | undefined, agent: string | undefined) {
  const methods: (PublicKeyAuthMethod | AgentAuthMethod)[] = [];
  if (key) methods.push({ type: 'publickey', username, key });
  if (agent) methods.push({ type: 'agent', username, agent });
  return methods;
}

/** The error that refuses `key` for `target`, or undefined when it is accepted. */
function hostKeyRefusal(key: Buffer, target: SshTarget, opts: SshOptions, last: boolean) {
  const { host, port } = target;
  const fingerprint = last ? opts.fingerprint : undefined;
  const verdict = hostKeys.checkHostKey({
    knownHosts: opts.knownHosts,
    fingerprint,
    host,
    port,
    key,
  });
  if (verdict.kind !== 'unknown' || !opts.acceptUnknownHostKey)
    return hostKeys.hostKeyError(verdict, host, port);
  const name = hostKeys.hostEntryName(host, port);
  opts.log?.(`ssh: WARNING: trusting the unknown host key ${verdict.fingerprint} of ${name}`);
  return undefined;
}

/** The private key, read and decrypted; refused before any connection when it cannot be. */
export function readPrivateKey(key: string | Buffer, passphrase: string | undefined): ParsedKey {
  let parsed: unknown;
  try {
    parsed = utils.parseKey(key, passphrase);
  } catch (err) {
    parsed = err;
  }
  // ssh2 returns an array for a file of several keys (and logs in with the first).
  const first = (Array.isArray(parsed) ? parsed[0] : parsed) as ReturnType<typeof utils.parseKey>;
  if (!(first instanceof Error) && first?.isPrivateKey()) return first;
  const why = first instanceof Error ? first.message : 'it is a public key';
  throw new BatonError(
    'SSH_KEY_INVALID',
    passphrase === undefined
      ? `the SSH private key cannot be used (${why}): if it is encrypted, give its passphrase`
      : `the SSH private key cannot be decrypted with the passphrase given (${why})`,
  );
}

/** A `direct-tcpip` channel from `client` to `host:port`, bounded by the connect timeout. */
function openChannel(client: SshClient, host: string, port: number, opts: SshOptions) {
  return boundedOpen(opts, (cb) => client.forwardOut('127.0.0.1', 0, host, port, cb));
}

/** A `direct-streamlocal` channel from `client` to the socket `socketPath`, bounded likewise. */
function openLocalChannel(client: SshClient, socketPath: string, opts: SshOptions) {
  return boundedOpen(opts, (cb) => client.openssh_forwardOutStreamLocal(socketPath, cb));
}

function boundedOpen(
  opts: SshOptions,
  open: (cb: (err: Error | undefined, channel: ClientChannel) => void) => void,
) {
  return new Promise<ClientChannel>((resolve, reject) => {
    const ms = opts.connectTimeoutMs ?? 15_000;
    let late = false;
    const timer = setTimeout(() => {
      late = true;
      reject(new Error(`no answer in ${ms} ms`));
    }, ms).unref();
    try {
      open((err, channel) => {
        clearTimeout(timer);
        if (late) channel?.destroy();
        else if (err) reject(err);
        else resolve(channel);
      });
    } catch (err) {
      // ssh2 throws 'Not connected' when the transport is already gone.
      clearTimeout(timer);
      reject(err instanceof Error ? err : new Error(String(err)));
    }
  });
}

function connection(hops: Hop[], opts: SshOptions): SshConnection {
  const target = hops[hops.length - 1]!;
  let closing = false;
  // Set at the first 'close' itself, before `closed` settles, so forward() can tell a drop.
  let ended = false;
  for (const hop of hops) hop.client.once('close', () => (ended = true));
  // When any hop goes, the others are of no use: end them all.
  const closed = Promise.race(hops.map((h) => h.gone)).then(async () => {
    const dropped = !closing;
    closing = true;
    await shutdown(hops);
    if (!dropped) return undefined;
    const cause = hops.map((h) => h.lastError).find((e) => e !== undefined);
    const why = cause ? `: ${cause.message}` : '';
    return new BatonError('CONNECTION_LOST', `the SSH connection to ${target.name} dropped${why}`);
  });
  return {
    closed,
    async close() {
      closing = true;
      await shutdown(hops);
      await closed;
    },
    async forward(host, port) {
      const lost = () =>
        new BatonError('CONNECTION_LOST', `the SSH connection to ${target.name} is closed`);
      if (closing || ended) throw lost();
      try {
        return await openChannel(target.client, host, port, opts);
      } catch (err) {
        if (ended) throw lost();
        throw new BatonError(
          'SSH_FORWARD_FAILED',
          `${target.name} could not connect to ${hostKeys.hostEntryName(host, port)} ` +
            `(${errorMessage(err)}): is the baton agent running and listening there, and is ` +
            'AllowTcpForwarding on in the server’s sshd_config?',
        );
      }
    },
    async forwardLocal(socketPath) {
      const lost = () =>
        new BatonError('CONNECTION_LOST', `the SSH connection to ${target.name} is closed`);
      if (closing || ended) throw lost();
      try {
        return await openLocalChannel(target.client, socketPath, opts);
      } catch (err) {
        if (ended) throw lost();
        // OpenSSH answers "open failed" alike for a missing socket and one the user may not
        // open: the message names both.
        throw new BatonError(
          'CHANNEL_SOCKET_UNREACHABLE',
          `${target.name} could not open the agent's socket ${socketPath} (${errorMessage(err)}): ` +
            'is the baton agent running with channel.socket there, and may this SSH user open ' +
            'it (root, or a member of channel.socketGroup)? AllowStreamLocalForwarding must be ' +
            'on (the default) in the server’s sshd_config',
        );
      }
    },
  };
}

const shutdowns = new WeakMap<Hop[], Promise<void>>();

/** Ends hops last first, destroying any that does not close in time. Idempotent. */
function shutdown(hops: Hop[]): Promise<void> {
  let done = shutdowns.get(hops);
  if (done === undefined) {
    done = (async () => {
      for (const hop of [...hops].reverse()) {
        hop.client.end();
        if (!(await within(hop.gone, CLOSE_GRACE_MS))) hop.client.destroy();
      }
      await within(Promise.all(hops.map((h) => h.gone)), CLOSE_GRACE_MS);
    })();
    shutdowns.set(hops, done);
  }
  return done;
}

/** Whether `promise` settled within `ms`; the timer is unref'd so it never holds the process. */
async function within(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<false>((r) => (timer = setTimeout(() => r(false), ms).unref()));
  try {
    return await Promise.race([promise.then(() => true), expired]);
  } finally {
    clearTimeout(timer);
  }
}
