import { readFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { createSecureContext } from 'node:tls';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { BatonError, errorMessage } from '../errors.js';
import type { DeployOutcome, DeployRequest, RollbackRequest } from '../protocol/channel.js';
import type { Agent } from '../supervisor/agent.js';
import { AgentConnection } from './agent-connection.js';
import { AuditLog } from './audit.js';
import { FailureLimiter, readTokenFile } from './auth.js';
import type { ChannelConfig } from './channel-config.js';
import { SessionRegistry, type DeploySession } from './deploy-session.js';
import { closeSoon } from './frames.js';

/** What the channel needs from the agent: run a deploy or rollback to its end, answer queries. */
export interface ChannelAgent {
  run(
    session: DeploySession,
    req: DeployRequest | RollbackRequest,
    upload: (bytes: number) => Readable,
  ): Promise<DeployOutcome>;
  query(req: { type: 'status' } | { type: 'releases'; app: string }): Promise<unknown>;
}

/** Adapts the agent: a session hears every event of its app while it runs. */
export function channelAgent(agent: Agent): ChannelAgent {
  return {
    async run(session, req, upload) {
      const app = req.app;
      // Bytes count as uploaded once the store has them whole: a cut upload sent none that stay.
      let asked = 0;
      let uploadedBytes = 0;
      const unsubscribe = agent.subscribe((event) => {
        if (event.app !== app) return;
        if (event.type === 'phase' && event.phase === 'received') uploadedBytes = asked;
        session.emit(event);
      });
      try {
        const result =
          req.type === 'deploy'
            ? await agent.deployReceived(app, req.manifest, (bytes) => {
                asked = bytes;
                return upload(bytes);
              })
            : {
                ...(await agent.rollback(app, req.to, { force: req.force === true })),
                uploadedBytes: 0,
              };
        return session.finish({
          releaseId: result.releaseId,
          previousReleaseId: result.previousReleaseId,
          generation: result.generation,
          cold: result.cold,
          uploadedBytes: result.uploadedBytes,
        });
      } catch (err) {
        return session.finish({ error: err, uploadedBytes });
      } finally {
        unsubscribe();
      }
    },
    query(req) {
      return req.type === 'status' ? Promise.resolve(agent.status()) : agent.releases(req.app);
    },
  };
}

/**
 * The agent's WebSocket server for remote deploys. Loopback by default (clients come through
 * SSH); TLS when configured. Bounded everywhere: frame size, connections that have not
 * authenticated, time to authenticate, failed logins, and a heartbeat that drops dead peers.
 */
export class ChannelServer {
  private http: http.Server | undefined;
  private wss: WebSocketServer | undefined;
  private readonly connections = new Map<WebSocket, AgentConnection>();
  readonly registry: SessionRegistry;
  readonly audit: AuditLog;
  private readonly limiter: FailureLimiter;
  private heartbeat: NodeJS.Timeout | undefined;
  private boundPort = 0;
  private readonly alive = new WeakSet<WebSocket>();
  private files: { token: string; tls: { cert: Buffer; key: Buffer } | undefined } | undefined;

  constructor(
    private readonly config: ChannelConfig,
    private readonly agent: ChannelAgent,
    stateDir: string,
    private readonly log: (record: Record<string, unknown>) => void,
  ) {
    this.registry = new SessionRegistry(config.keepResults);
    this.limiter = new FailureLimiter(config.authFailures, config.authWindowMs);
    this.audit = new AuditLog(config.auditLog ?? path.join(stateDir, 'audit.log'), (msg) =>
      log({ type: 'channel', level: 'error', msg }),
    );
  }

  /**
   * Reads and checks the token and TLS files, binding nothing: the agent calls it before it
   * starts or adopts any app, so a bad file fails there, with nothing to undo.
   */
  async prepare(): Promise<void> {
    const token = await readTokenFile(this.config.tokenFile, { private: true });
    const tls = this.config.tls;
    let pems: { cert: Buffer; key: Buffer } | undefined;
    if (tls) {
      pems = { cert: await readPem(tls.cert, 'tls.cert'), key: await readPem(tls.key, 'tls.key') };
      try {
        // What https.createServer does with them: a PEM that is not one, or a key that does not
        // match the certificate, fails here rather than after the apps have started.
        createSecureContext(pems);
      } catch (err) {
        throw new BatonError(
          'CHANNEL_CONFIG_INVALID',
          `channel.tls: ${tls.cert} and ${tls.key} are not a usable certificate and key: ${errorMessage(err)}`,
        );
      }
    }
    this.files = { token, tls: pems };
  }

  /** Listens (reading the files first unless `prepare` has). */
  async listen(): Promise<{ url: string; port: number }> {
    if (!this.files) await this.prepare();
    const { token, tls } = this.files!;
    const server = tls ? https.createServer(tls) : http.createServer();
    server.headersTimeout = 10_000;
    server.requestTimeout = 10_000;
    server.on('request', (_req, res) => {
      res.writeHead(426, { 'content-type': 'text/plain' }).end('baton agent: WebSocket only\n');
    });
    const wss = new WebSocketServer({
      server,
      maxPayload: this.config.maxPayload,
      perMessageDeflate: false,
    });
    wss.on('connection', (ws, req) => {
      const pending = [...this.connections.values()].filter((c) => !c.authenticated).length;
      if (pending >= this.config.maxPendingConnections) {
        // The refused socket is still read until its close handshake ends: a bad frame then
        // (too big, not UTF-8) is an 'error' event, which with no listener would end the agent.
        // And a peer that never answers the close is not waited for.
        ws.on('error', () => ws.terminate());
        closeSoon(ws, 1013, 'too many connections waiting to authenticate; try again later');
        return;
      }
      const peer = req.socket.remoteAddress ?? 'unknown';
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
        uploadOwner: (session) => [...this.connections.values()].find((c) => c.uploads(session)),
      });
      this.connections.set(ws, conn);
      ws.on('close', () => this.connections.delete(ws));
    });
    // Frames over maxPayload and bad handshakes end that connection only.
    wss.on('error', (err) => this.log({ type: 'channel', level: 'error', msg: errorMessage(err) }));
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) =>
        reject(
          new BatonError(
            'LISTENER_BIND_FAILED',
            `the channel cannot listen on ${this.config.host}:${this.config.port}: ${errorMessage(err)}`,
          ),
        ),
      );
      server.listen(this.config.port, this.config.host, () => resolve());
    });
    this.http = server;
    this.wss = wss;
    this.heartbeat = setInterval(() => this.beat(), this.config.heartbeatMs);
    this.heartbeat.unref();
    const port = (server.address() as AddressInfo).port;
    this.boundPort = port;
    const host = this.config.host.includes(':') ? `[${this.config.host}]` : this.config.host;
    const url = `${tls ? 'wss' : 'ws'}://${host}:${port}`;
    this.log({ type: 'channel', msg: `listening on ${url}`, port });
    return { url, port };
  }

  get port(): number | undefined {
    const addr = this.http?.address();
    return addr && typeof addr === 'object' ? addr.port : undefined;
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

  /** Listens again after stopListening (an upgrade that failed), on the same port. */
  async resumeListening(): Promise<void> {
    const server = this.http;
    if (!server || server.listening) return;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.boundPort, this.config.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  }

  /** Stops taking connections (an agent upgrade); those open carry on. */
  async stopListening(): Promise<void> {
    const server = this.http;
    if (!server?.listening) return;
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      // close() waits for open connections; the port is free as soon as it is called.
      setImmediate(resolve);
    });
  }

  async close(): Promise<void> {
    clearInterval(this.heartbeat);
    for (const ws of this.connections.keys()) ws.close(1001, 'agent stopping');
    const timer = setTimeout(() => {
      for (const ws of this.connections.keys()) ws.terminate();
    }, 2000);
    timer.unref();
    await new Promise<void>((resolve) => (this.wss ? this.wss.close(() => resolve()) : resolve()));
    await new Promise<void>((resolve) =>
      this.http?.listening ? this.http.close(() => resolve()) : resolve(),
    );
    clearTimeout(timer);
    await this.audit.flush();
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
