import type { Readable } from 'node:stream';
import type { WebSocket, RawData } from 'ws';
import { BatonError, errorCode, errorMessage, formatIssues } from '../errors.js';
import {
  ClientMessageSchema,
  CloseCode,
  PROTOCOL_SINCE,
  type ClientMessage,
  type ServerMessage,
  type SessionRequest,
} from '../protocol/channel.js';
import type { DeploySession, SessionInfo, SessionRegistry } from './deploy-session.js';
import type { ChannelAgent } from './channel-agent.js';
import { closeSoon, frameBytes } from './frames.js';
import { Handshake, type HandshakeDeps } from './handshake.js';
import { UploadSink } from './upload-sink.js';

export interface ConnectionDeps extends HandshakeDeps {
  agent: ChannelAgent;
  registry: SessionRegistry;
  authTimeoutMs: number;
  /** An upload with no byte for this long ends. */
  uploadIdleMs?: number;
  /** The connection carrying a session's upload, if one is. */
  uploadOwner: (session: DeploySession) => AgentConnection | undefined;
}

/**
 * One client connection on the agent: hello, auth, then requests. Nothing but hello and auth is
 * read before auth; any message that fails its schema closes the connection with the reason.
 * Deploys run in sessions that outlive the connection; an upload does not: its bytes come only
 * over the connection that asked for them.
 */
export class AgentConnection {
  private readonly handshake: Handshake;
  private closed = false;
  private upload: UploadSink | undefined;
  private readonly detach = new Set<() => void>();
  /** Sessions this connection already streams: a second attach does not send them twice. */
  private readonly following = new Set<DeploySession>();
  private readonly authTimer: NodeJS.Timeout;

  constructor(
    private readonly ws: WebSocket,
    readonly peer: string,
    private readonly deps: ConnectionDeps,
  ) {
    this.handshake = new Handshake(peer, deps);
    this.authTimer = setTimeout(
      () =>
        this.refuse(
          CloseCode.policy,
          'AUTH_TIMEOUT',
          `no hello and auth within ${deps.authTimeoutMs} ms`,
        ),
      deps.authTimeoutMs,
    ).unref();
    ws.on('message', (data, isBinary) => this.onMessage(data, isBinary));
    ws.on('close', () => this.onClose());
    // ws has already begun its own close on a bad frame (1009 too big, 1007 not UTF-8): it sent
    // the close code, which terminating at once would throw away (the peer would see 1006).
    // Read nothing more, and do not wait on the peer for long.
    ws.on('error', () => {
      this.closed = true;
      closeSoon(ws);
    });
  }

  get authenticated(): boolean {
    return this.handshake.done;
  }

  /** Closed (1013) to make room for a newer connection: the client may simply try again. */
  evict(reason: string): void {
    this.closed = true;
    clearTimeout(this.authTimer);
    closeSoon(this.ws, 1013, reason);
  }

  private send(msg: ServerMessage): void {
    if (!this.closed && this.ws.readyState === this.ws.OPEN) this.ws.send(JSON.stringify(msg));
  }

  /** Says why, then closes. Nothing the peer sent after the refused frame is read. */
  private refuse(closeCode: number, code: string, message: string): void {
    this.send({ type: 'error', code, message });
    // ws still emits frames that arrive during the close handshake: without this, a peer could
    // pipeline more auth guesses behind a refused one (past the failure limiter) and requests
    // behind those.
    this.closed = true;
    clearTimeout(this.authTimer);
    // A peer that does not complete the close handshake is not waited for.
    closeSoon(this.ws, closeCode, message);
  }

  private onClose(): void {
    this.closed = true;
    clearTimeout(this.authTimer);
    for (const fn of this.detach) fn();
    this.detach.clear();
    const up = this.upload;
    if (up) {
      this.upload = undefined;
      up.fail(
        new BatonError(
          'UPLOAD_INCOMPLETE',
          `the connection closed after ${up.received} of ${up.total} artifact bytes; nothing changed on the host. Deploy again with the same deploy id to retry`,
        ),
      );
    }
  }

  private onMessage(data: RawData, isBinary: boolean): void {
    if (this.closed) return;
    if (isBinary) return this.onBytes(frameBytes(data));
    let raw: unknown;
    try {
      raw = JSON.parse(frameBytes(data).toString('utf8'));
    } catch {
      return this.refuse(CloseCode.policy, 'PROTOCOL_VIOLATION', 'a text frame that is not JSON');
    }
    const parsed = ClientMessageSchema.safeParse(raw);
    if (!parsed.success)
      return this.refuse(
        CloseCode.policy,
        'PROTOCOL_VIOLATION',
        `bad message: ${formatIssues(parsed.error)}`,
      );
    this.handle(parsed.data);
  }

  private handle(msg: ClientMessage): void {
    if (!this.handshake.done) {
      const step = this.handshake.take(msg);
      if (step.kind === 'refuse') return this.refuse(step.closeCode, step.code, step.message);
      if (this.handshake.done) clearTimeout(this.authTimer);
      return this.send(step.message);
    }
    switch (msg.type) {
      case 'stage':
      case 'switch': {
        const since = PROTOCOL_SINCE[msg.type];
        const spoken = this.handshake.protocol;
        if (spoken < since)
          return this.send({
            type: 'error',
            code: 'PROTOCOL_MISMATCH',
            deployId: msg.deployId,
            message: `${msg.type} is a protocol ${since} request, and this connection speaks protocol ${spoken} (the client's hello offered no later version); nothing changed on the host. Use a client that speaks protocol ${since}`,
          });
        return void this.onDeploy(msg);
      }
      case 'deploy':
      case 'rollback':
        return void this.onDeploy(msg);
      case 'attach': {
        const session = this.deps.registry.get(msg.deployId);
        if (!session)
          return this.send({
            type: 'error',
            code: 'DEPLOY_UNKNOWN',
            deployId: msg.deployId,
            message: `this agent knows no deploy ${msg.deployId} (it may have restarted since)`,
          });
        // The client is back on this connection: an upload still open on another is dead.
        const owner = session.outcome ? undefined : this.deps.uploadOwner(session);
        if (owner && owner !== this) owner.cut();
        this.deps.audit.record({ event: 'deploy-attached', peer: this.peer, ...session.info });
        this.send({ type: 'accepted', deployId: msg.deployId, attached: true });
        return this.follow(session, msg.after);
      }
      case 'status':
      case 'releases':
        return void this.deps.agent
          .query(msg)
          .then((result) => this.send({ type: 'reply', requestId: msg.requestId, result }))
          .catch((err: unknown) =>
            this.send({
              type: 'error',
              requestId: msg.requestId,
              code: errorCode(err) ?? 'PROTOCOL_VIOLATION',
              message: errorMessage(err),
            }),
          );
      default:
        return this.refuse(CloseCode.policy, 'PROTOCOL_VIOLATION', `${msg.type} out of turn`);
    }
  }

  /** Streams a session's messages to this client until either ends. */
  private follow(session: DeploySession, after: number): void {
    if (this.following.has(session)) return;
    this.following.add(session);
    const stop = session.attach(after, (msg) => this.send(msg));
    this.detach.add(stop);
    void session.done.then(() => {
      this.detach.delete(stop);
      this.following.delete(session);
    });
  }

  private async onDeploy(req: SessionRequest): Promise<void> {
    const info: SessionInfo = {
      deployId: req.deployId,
      kind: req.type,
      app: req.app,
      origin: req.origin,
      subject: subjectOf(req),
    };
    const { registry } = this.deps;
    let existing = registry.get(req.deployId);
    if (existing && !existing.sameAs(info))
      return this.send({
        type: 'error',
        code: 'PROTOCOL_VIOLATION',
        deployId: req.deployId,
        message: `deploy id ${req.deployId} was used for another ${existing.info.kind}; choose a new id`,
      });
    // The same deploy, its upload still coming over a connection that went quiet: that
    // connection is the same client's, gone. Cut it, let the upload fail, and start again.
    const owner = existing && !existing.outcome ? this.deps.uploadOwner(existing) : undefined;
    if (existing && owner && owner !== this) {
      owner.cut();
      await existing.done;
    }
    existing = registry.get(req.deployId);
    if (existing && !existing.retryable) {
      this.deps.audit.record({ event: 'deploy-attached', peer: this.peer, ...info });
      this.send({ type: 'accepted', deployId: req.deployId, attached: true });
      return this.follow(existing, 0);
    }
    let session: DeploySession;
    try {
      session = registry.begin(info);
    } catch (err) {
      return this.send({
        type: 'error',
        code: errorCode(err) ?? 'DEPLOY_BUSY',
        deployId: req.deployId,
        message: errorMessage(err),
      });
    }
    this.deps.audit.record({ event: 'deploy-started', peer: this.peer, ...info });
    this.send({ type: 'accepted', deployId: req.deployId, attached: false });
    this.follow(session, 0);
    const outcome = await this.deps.agent.run(session, req, (bytes) =>
      this.openUpload(session, bytes),
    );
    this.deps.audit.record({
      event: 'deploy-finished',
      deployId: info.deployId,
      kind: info.kind,
      app: info.app,
      origin: info.origin,
      ok: outcome.ok,
      releaseId: outcome.releaseId,
      previousReleaseId: outcome.previousReleaseId,
      uploadedBytes: outcome.uploadedBytes,
      totalMs: outcome.totalMs,
      code: outcome.error?.code,
      message: outcome.error?.message,
    });
  }

  /** Drops the connection at once (a stale one whose client came back on another). */
  cut(): void {
    this.ws.terminate();
  }

  /** Whether this connection carries the upload of `session` now. */
  carriesUploadOf(session: DeploySession | undefined): boolean {
    return session !== undefined && this.upload?.session === session;
  }

  private openUpload(session: DeploySession, bytes: number): Readable {
    if (this.closed)
      throw new BatonError(
        'UPLOAD_INCOMPLETE',
        'the client left before sending the artifact; nothing changed on the host. Deploy again with the same deploy id to retry',
      );
    if (this.upload)
      throw new BatonError(
        'PROTOCOL_VIOLATION',
        `this connection is carrying the upload of ${this.upload.session.deployId}; deploy each app over its own connection`,
      );
    const idleMs = this.deps.uploadIdleMs ?? 60_000;
    const sink = new UploadSink(session, bytes, this.ws, idleMs, () => {
      if (this.upload !== sink) return;
      this.upload = undefined;
      sink.fail(
        new BatonError(
          'UPLOAD_INCOMPLETE',
          `no artifact bytes for ${idleMs / 1000} s; nothing changed on the host. Deploy again with the same deploy id to retry`,
        ),
      );
      this.refuse(CloseCode.policy, 'UPLOAD_INCOMPLETE', 'the upload stalled');
    });
    // A deploy that has ended takes no more bytes: later ones are refused, not buffered.
    void session.done.then(() => {
      if (this.upload !== sink) return;
      this.upload = undefined;
      sink.fail();
    });
    this.upload = sink;
    this.send({ type: 'upload', deployId: session.deployId, bytes });
    if (bytes === 0) {
      this.upload = undefined;
      sink.stream.end();
    }
    return sink.stream;
  }

  private onBytes(chunk: Buffer): void {
    const up = this.upload;
    if (!up || !this.handshake.done)
      return this.refuse(
        CloseCode.policy,
        'PROTOCOL_VIOLATION',
        'artifact bytes the agent did not ask for',
      );
    if (up.overflows(chunk.length)) {
      // The deploy ends with what happened. Left to the close, it would read "closed after
      // <more than total> of <total> bytes" as UPLOAD_INCOMPLETE, which a client retries.
      this.upload = undefined;
      up.fail(
        new BatonError(
          'PROTOCOL_VIOLATION',
          `the client sent more than the ${up.total} artifact bytes the agent asked for; nothing changed on the host`,
        ),
      );
      this.refuse(
        CloseCode.policy,
        'PROTOCOL_VIOLATION',
        `more than the ${up.total} bytes promised`,
      );
      return;
    }
    if (up.take(chunk)) this.upload = undefined;
  }
}

/** What a request is about: the same deploy id with another subject is another deploy. */
function subjectOf(req: SessionRequest): string {
  switch (req.type) {
    case 'deploy':
    case 'stage':
      return req.manifest.manifest.archive.sha256;
    case 'switch':
      return req.to;
    case 'rollback':
      return `${req.to ?? 'previous'}${req.force === true ? ' (forced)' : ''}`;
  }
}
