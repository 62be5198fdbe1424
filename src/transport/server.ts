import { readFile } from 'node:fs/promises';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { createSecureContext, TLSSocket, type SecureContext } from 'node:tls';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { BatonError, errorMessage } from '../errors.js';
import { AgentConnection } from './agent-connection.js';
import type { ChannelAgent } from './channel-agent.js';
import { AuditLog } from './audit.js';
import { FailureLimiter, readTokenFile } from './auth.js';
import type { ChannelConfig } from '../protocol/channel-config.js';
import { listenOnSocket, resolveSocketGroup } from './channel-socket.js';
import { ConnectionGate, connectionCap, softFileLimit } from './connection-gate.js';
import { SessionRegistry } from './deploy-session.js';

/** Where the channel listens, as `baton agent status` and the log show it. */
export interface ChannelAddress {
  socket: string;
  /** Only when `port` is configured. */
  port?: number;
  url?: string;
}

/**
 * The agent's WebSocket server for remote deploys: on a unix socket only root (or
 * `socketGroup`) may open, reached through SSH; on TCP as well when `port` is set (TLS beyond
 * loopback). Bounded everywhere: open connections (below the file limit), time to upgrade,
 * frame size, connections that have not authenticated, time to authenticate, failed logins,
 * and a heartbeat that drops dead peers.
 */
export class ChannelServer {
  /** Parses HTTP for every listener; it never listens itself. */
  private readonly http: http.Server;
  private readonly wss: WebSocketServer;
  private socketServer: net.Server | undefined;
  private tcpServer: net.Server | undefined;
  private readonly connections = new Map<WebSocket, AgentConnection>();
  readonly registry: SessionRegistry;
  readonly audit: AuditLog;
  private readonly limiter: FailureLimiter;
  readonly gate: ConnectionGate;
  private heartbeat: NodeJS.Timeout | undefined;
  private boundPort = 0;
  private readonly alive = new WeakSet<WebSocket>();
  /** Who is at the other end of each socket the HTTP parser sees, and its raw connection. */
  private readonly peers = new WeakMap<Duplex, { peer: string; raw: net.Socket }>();
  private files:
    | {
        token: string;
        tls: SecureContext | undefined;
        gid: number | undefined;
      }
    | undefined;

  constructor(
    private readonly config: ChannelConfig,
    private readonly agent: ChannelAgent,
    stateDir: string,
    private readonly log: (record: Record<string, unknown>) => void,
    /** The gid of a group name, for `socketGroup`: the host's group database. */
    private readonly lookupGroup: (name: string) => Promise<number | undefined>,
    softLimit: number | undefined = softFileLimit(),
  ) {
    this.registry = new SessionRegistry(config.keepResults);
    this.limiter = new FailureLimiter(config.authFailures, config.authWindowMs);
    this.audit = new AuditLog(config.auditLog ?? path.join(stateDir, 'audit.log'), {
      maxBytes: config.auditMaxBytes,
      windowMs: config.authWindowMs,
      onError: (msg) => log({ type: 'channel', level: 'error', msg }),
    });
    this.gate = new ConnectionGate(
      connectionCap(config.maxConnections, softLimit),
      config.upgradeTimeoutMs,
      (peer, reason) => this.audit.refusal({ event: 'connection-refused', peer, reason }),
    );
    this.http = http.createServer();
    this.http.on('request', (_req, res) => {
      res.writeHead(426, { 'content-type': 'text/plain' }).end('baton agent: WebSocket only\n');
    });
    this.http.on('upgrade', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
      const who = this.peers.get(socket);
      if (!who) return socket.destroy();
      this.gate.upgraded(who.raw);
      this.wss.handleUpgrade(req, socket, head, (ws) => this.onConnection(ws, who.peer));
    });
    this.wss = new WebSocketServer({
      noServer: true,
      maxPayload: config.maxPayload,
      perMessageDeflate: false,
    });
    // Frames over maxPayload and bad handshakes end that connection only.
    this.wss.on('error', (err) =>
      this.log({ type: 'channel', level: 'error', msg: errorMessage(err) }),
    );
  }

  /**
   * Reads and checks the token and TLS files and the socket's group, binding nothing: the agent
   * calls it before it starts or adopts any app, so a bad file fails there, with nothing to undo.
   */
  async prepare(): Promise<void> {
    const token = await readTokenFile(this.config.tokenFile, { private: true });
    const tls = this.config.tls;
    let context: SecureContext | undefined;
    if (tls) {
      const pems = {
        cert: await readPem(tls.cert, 'tls.cert'),
        key: await readPem(tls.key, 'tls.key'),
      };
      try {
        // A PEM that is not one, or a key that does not match the certificate, fails here
        // rather than after the apps have started.
        context = createSecureContext(pems);
      } catch (err) {
        throw new BatonError(
          'CHANNEL_CONFIG_INVALID',
          `channel.tls: ${tls.cert} and ${tls.key} are not a usable certificate and key: ${errorMessage(err)}`,
        );
      }
    }
    const group = this.config.socketGroup;
    const gid = group === undefined ? undefined : await resolveSocketGroup(group, this.lookupGroup);
    this.files = { token, tls: context, gid };
  }

  /** A raw connection on either listener: counted and timed before a byte is read. */
  private accept(raw: net.Socket, via: 'socket' | 'tcp'): void {
    raw.on('error', () => raw.destroy());
    const peer = via === 'socket' ? 'unix' : (raw.remoteAddress ?? 'unknown');
    if (!this.gate.admit(raw, peer)) return;
    const tls = via === 'tcp' ? this.files?.tls : undefined;
    if (!tls) {
      this.peers.set(raw, { peer, raw });
      this.http.emit('connection', raw);
      return;
    }
    const secure = new TLSSocket(raw, { isServer: true, secureContext: tls });
    secure.on('error', () => secure.destroy());
    secure.once('secure', () => {
      this.peers.set(secure, { peer, raw });
      this.http.emit('connection', secure);
    });
  }

  private onConnection(ws: WebSocket, peer: string): void {
    const pending = [...this.connections.values()].filter((c) => !c.authenticated);
    // Full: the oldest pending connection makes room. A real client authenticates within a
    // round trip of connecting, so it is the newest, not the oldest; refusing newcomers instead
    // let a few idle sockets that reconnect keep every real client out.
    if (pending.length >= this.config.maxPendingConnections) {
      const oldest = pending[0]!;
      const reason = 'too many connections waiting to authenticate; closed to make room';
      this.audit.refusal({ event: 'connection-refused', peer: oldest.peer, reason });
      oldest.evict(`${reason}; try again`);
    }
    const { token } = this.files!;
    this.alive.add(ws);
    ws.on('pong', () => this.alive.add(ws));
    const conn = new AgentConnection(ws, peer, {
      agent: this.agent,
      registry: this.registry,
      audit: this.audit,
      limiter: this.limiter,
      token,
      authTimeoutMs: this.config.authTimeoutMs,
      maxPayload: this.config.maxPayload,
      uploadIdleMs: this.config.uploadIdleMs,
      log: this.log,
      uploadOwner: (session) =>
        [...this.connections.values()].find((c) => c.carriesUploadOf(session)),
    });
    this.connections.set(ws, conn);
    ws.on('close', () => this.connections.delete(ws));
  }

  /** Listens on the socket, and on TCP when `port` is set (reading the files first unless `prepare` has). */
  async listen(): Promise<ChannelAddress> {
    if (!this.files) await this.prepare();
    await this.bind();
    this.heartbeat ??= setInterval(() => this.beat(), this.config.heartbeatMs);
    this.heartbeat.unref();
    const address = this.address()!;
    if (this.gate.cap < this.config.maxConnections)
      this.log({
        type: 'channel',
        level: 'warn',
        msg: `at most ${this.gate.cap} channel connections (not ${this.config.maxConnections}): the rest of the open-file limit is kept for the apps; raise LimitNOFILE to allow more`,
      });
    this.log({
      type: 'channel',
      msg: `listening on ${address.socket}${address.url ? ` and ${address.url}` : ''}`,
      ...address,
    });
    if (address.url?.startsWith('ws:'))
      this.log({
        type: 'channel',
        level: 'warn',
        msg: `${address.url} is plain TCP: every local user can connect to it (and hold connections or fail logins); deploy through SSH to ${address.socket} instead`,
      });
    return address;
  }

  private async bind(): Promise<void> {
    const socketServer = net.createServer((raw) => this.accept(raw, 'socket'));
    await listenOnSocket(socketServer, this.config.socket, this.files!.gid);
    this.socketServer = socketServer;
    if (this.config.port === undefined) return;
    const tcp = net.createServer((raw) => this.accept(raw, 'tcp'));
    const port = this.boundPort || this.config.port;
    try {
      await new Promise<void>((resolve, reject) => {
        tcp.once('error', reject);
        tcp.listen(port, this.config.host, () => {
          tcp.off('error', reject);
          resolve();
        });
      });
    } catch (err) {
      // Closing the socket listener also removes its file.
      socketServer.close();
      this.socketServer = undefined;
      throw new BatonError(
        'LISTENER_BIND_FAILED',
        `the channel cannot listen on ${this.config.host}:${port}: ${errorMessage(err)}`,
      );
    }
    this.tcpServer = tcp;
    this.boundPort = (tcp.address() as AddressInfo).port;
  }

  /** Where it listens now; undefined when it does not. */
  address(): ChannelAddress | undefined {
    if (!this.socketServer?.listening) return undefined;
    const addr = this.tcpServer?.address();
    if (!addr || typeof addr !== 'object') return { socket: this.config.socket };
    const host = this.config.host.includes(':') ? `[${this.config.host}]` : this.config.host;
    const scheme = this.files?.tls ? 'wss' : 'ws';
    return { socket: this.config.socket, port: addr.port, url: `${scheme}://${host}:${addr.port}` };
  }

  get port(): number | undefined {
    return this.address()?.port;
  }

  /** A peer that answered no ping since the last beat is gone: drop it. */
  private beat(): void {
    for (const ws of this.connections.keys()) {
      if (!this.alive.has(ws)) {
        ws.terminate();
        continue;
      }
      this.alive.delete(ws);
      ws.ping();
    }
  }

  /**
   * Listens again after stopListening (an upgrade that failed), on the same socket and port.
   * A socket file a successor left is removed only if nothing answers on it.
   */
  async resumeListening(): Promise<void> {
    if (this.socketServer?.listening) return;
    await this.bind();
  }

  /**
   * Stops taking connections (an agent upgrade); those open carry on. The socket file goes
   * now, before a successor binds its own: closing a unix listener unlinks its path, so it
   * must never happen after the successor has bound it.
   */
  async stopListening(): Promise<void> {
    // close() waits for open connections; the socket and port are free as soon as it is called.
    this.socketServer?.close();
    this.tcpServer?.close();
    this.socketServer = undefined;
    this.tcpServer = undefined;
    await new Promise<void>((resolve) => setImmediate(resolve));
  }

  async close(): Promise<void> {
    clearInterval(this.heartbeat);
    await this.stopListening();
    for (const ws of this.connections.keys()) ws.close(1001, 'agent stopping');
    const timer = setTimeout(() => {
      for (const ws of this.connections.keys()) ws.terminate();
    }, 2000);
    timer.unref();
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
    clearTimeout(timer);
    await this.audit.close();
  }
}

async function readPem(file: string, field: string): Promise<Buffer> {
  return readFile(file).catch((err: unknown) => {
    throw new BatonError(
      'CHANNEL_CONFIG_INVALID',
      `channel.${field}: cannot read ${file}: ${errorMessage(err)}`,
    );
  });
}
