import { WebSocket, type RawData } from 'ws';
import { toolVersion } from '../artifact/release-id.js';
import { BatonError, type ErrorCode, formatIssues } from '../errors.js';
import {
  CloseCode,
  DEFAULT_MAX_PAYLOAD,
  ServerMessageSchema,
  SUPPORTED_PROTOCOLS,
  type ClientMessage,
  type ServerMessage,
} from '../protocol/channel.js';
import { agentProof, clientMac, macEquals, makeNonce } from './auth.js';
import type { Dialer } from './dialer.js';
import { closeReason, frameBytes } from './frames.js';

/** How long the handshake (hello to welcome) may take once the socket is open. */
const HANDSHAKE_TIMEOUT_MS = 15_000;

type Waiter = {
  match: (msg: ServerMessage) => boolean;
  resolve: (msg: ServerMessage) => void;
  reject: (err: Error) => void;
};

/** Error codes the agent sends that map onto ours; anything else stays the agent's text. */
function asBatonError(code: string, message: string): BatonError {
  return new BatonError(code as ErrorCode, message);
}

/**
 * An authenticated connection to an agent. Every frame from the agent is validated; one that is
 * not a known message ends the connection (PROTOCOL_VIOLATION). A connection that drops rejects
 * whatever waits on it with CONNECTION_LOST.
 */
export class AgentClient {
  private readonly waiters = new Set<Waiter>();
  private readonly handlers = new Set<(msg: ServerMessage) => void>();
  private closedWith: BatonError | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  /** The largest frame the agent takes, from its challenge. */
  maxFrame = DEFAULT_MAX_PAYLOAD;
  /** The agent's own description, e.g. `baton 0.1.0`. */
  agentName = '';
  /**
   * The protocol version the agent chose at hello (the highest both speak): requests newer
   * than it (see PROTOCOL_SINCE) must not be sent. 0 until the handshake is done.
   */
  protocol = 0;

  private constructor(private readonly ws: WebSocket) {
    ws.on('message', (data, isBinary) => this.onFrame(data, isBinary));
    ws.on('close', (code, reason) =>
      this.lost(
        new BatonError(
          'CONNECTION_LOST',
          `the connection to the agent closed (${code}${reason.length ? `: ${reason.toString()}` : ''})`,
        ),
      ),
    );
    ws.on('error', (err) =>
      this.lost(
        new BatonError('CONNECTION_LOST', `connection to the agent failed: ${err.message}`),
      ),
    );
  }

  /** Opens a WebSocket through `dialer` and authenticates with `token` (both ways). */
  static async connect(
    dialer: Dialer,
    token: string,
    opts: { heartbeatMs?: number } = {},
  ): Promise<AgentClient> {
    const ws = await dialer.open({ maxPayload: DEFAULT_MAX_PAYLOAD });
    const client = new AgentClient(ws);
    try {
      await client.handshake(token);
    } catch (err) {
      client.close();
      throw err;
    }
    client.startHeartbeat(opts.heartbeatMs ?? 15_000);
    return client;
  }

  private startHeartbeat(ms: number): void {
    let alive = true;
    this.ws.on('pong', () => (alive = true));
    this.heartbeat = setInterval(() => {
      if (!alive) return this.ws.terminate();
      alive = false;
      this.ws.ping();
    }, ms);
    this.heartbeat.unref();
  }

  private async handshake(token: string): Promise<void> {
    const timer = setTimeout(
      () =>
        this.lost(
          new BatonError('CONNECTION_LOST', 'the agent did not complete the handshake in time'),
        ),
      HANDSHAKE_TIMEOUT_MS,
    );
    try {
      this.send({
        type: 'hello',
        protocols: [...SUPPORTED_PROTOCOLS],
        client: `baton ${toolVersion()}`,
      });
      const challenge = await this.next((m) => m.type === 'challenge');
      if (challenge.type !== 'challenge') throw new Error('unreachable');
      this.agentName = challenge.agent;
      this.maxFrame = challenge.maxPayload;
      if (!SUPPORTED_PROTOCOLS.includes(challenge.protocol))
        throw new BatonError(
          'PROTOCOL_MISMATCH',
          `the agent (${challenge.agent}) chose protocol ${challenge.protocol}, this client (baton ${toolVersion()}) speaks ${SUPPORTED_PROTOCOLS.join(', ')}; upgrade the older side`,
        );
      this.protocol = challenge.protocol;
      const clientNonce = makeNonce();
      this.send({ type: 'auth', clientNonce, mac: clientMac(token, challenge.nonce, clientNonce) });
      const welcome = await this.next((m) => m.type === 'welcome');
      if (welcome.type !== 'welcome') throw new Error('unreachable');
      if (!macEquals(welcome.proof, agentProof(token, challenge.nonce, clientNonce)))
        throw new BatonError(
          'AGENT_UNVERIFIED',
          'the agent could not prove it holds the token: this is not the agent you meant, or its token differs; nothing was sent',
        );
    } finally {
      clearTimeout(timer);
    }
  }

  send(msg: ClientMessage): void {
    if (this.closedWith) throw this.closedWith;
    this.ws.send(JSON.stringify(msg));
  }

  /** Sends artifact bytes; resolves once the socket took them (for backpressure). */
  sendBytes(chunk: Buffer): Promise<void> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    return new Promise((resolve, reject) =>
      this.ws.send(chunk, { binary: true }, (err) =>
        // While the agent's close frame is on its way, ws fails sends with a plain error: it is
        // the connection going, which a reconnect can mend.
        err
          ? reject(
              this.closedWith ??
                new BatonError(
                  'CONNECTION_LOST',
                  `the connection to the agent closed: ${err.message}`,
                ),
            )
          : resolve(),
      ),
    );
  }

  /** Bytes queued in this process, not yet handed to the socket. */
  get buffered(): number {
    return this.ws.bufferedAmount;
  }

  /** Calls `fn` for every message from now on; returns the function that stops it. */
  onMessage(fn: (msg: ServerMessage) => void): () => void {
    this.handlers.add(fn);
    return () => this.handlers.delete(fn);
  }

  /** The next message that matches; an error message from the agent rejects it instead. */
  next(match: (msg: ServerMessage) => boolean): Promise<ServerMessage> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    return new Promise((resolve, reject) => this.waiters.add({ match, resolve, reject }));
  }

  /** A status or releases query: the agent's reply. */
  async query(req: { type: 'status' } | { type: 'releases'; app: string }): Promise<unknown> {
    const requestId = `q-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;
    const reply = this.next(
      (m) => (m.type === 'reply' || m.type === 'error') && m.requestId === requestId,
    );
    this.send({ ...req, requestId });
    const msg = await reply;
    if (msg.type === 'error') throw asBatonError(msg.code, msg.message);
    if (msg.type !== 'reply') throw new Error('unreachable');
    return msg.result;
  }

  /** A failure of this connection: what closed it. Undefined while open. */
  get failure(): BatonError | undefined {
    return this.closedWith;
  }

  /** Calls `fn` once when the connection closes, with why; returns the function that stops it. */
  onClose(fn: (why: BatonError) => void): () => void {
    if (this.closedWith) {
      fn(this.closedWith);
      return () => undefined;
    }
    const listener = () => fn(this.closedWith!);
    this.ws.once('close', listener);
    return () => void this.ws.off('close', listener);
  }

  /** Resolves when the connection has closed, with why. */
  closed(): Promise<BatonError> {
    return new Promise((resolve) => this.onClose(resolve));
  }

  close(): void {
    clearInterval(this.heartbeat);
    if (this.ws.readyState === WebSocket.OPEN) this.ws.close(1000);
    else this.ws.terminate();
  }

  private onFrame(data: RawData, isBinary: boolean): void {
    if (isBinary) return this.violation('the agent sent a binary frame');
    let raw: unknown;
    try {
      raw = JSON.parse(frameBytes(data).toString('utf8'));
    } catch {
      return this.violation('the agent sent a frame that is not JSON');
    }
    const parsed = ServerMessageSchema.safeParse(raw);
    if (!parsed.success)
      return this.violation(`bad message from the agent: ${formatIssues(parsed.error)}`);
    const msg = parsed.data;
    // An error that ends the connection (no request id) fails whatever waits.
    if (msg.type === 'error' && msg.requestId === undefined && msg.deployId === undefined) {
      this.lost(asBatonError(msg.code, msg.message));
      return;
    }
    for (const w of this.waiters) {
      if (w.match(msg)) {
        this.waiters.delete(w);
        w.resolve(msg);
        return;
      }
    }
    for (const fn of this.handlers) fn(msg);
  }

  private violation(message: string): void {
    this.lost(new BatonError('PROTOCOL_VIOLATION', message));
    this.ws.close(CloseCode.policy, closeReason(message));
  }

  private lost(err: BatonError): void {
    if (!this.closedWith) this.closedWith = err;
    clearInterval(this.heartbeat);
    for (const w of this.waiters) w.reject(this.closedWith);
    this.waiters.clear();
    if (this.ws.readyState !== WebSocket.CLOSED && this.ws.readyState !== WebSocket.CLOSING)
      this.ws.terminate();
  }
}
