import { WebSocket } from 'ws';
import { ServerMessageSchema, type ServerMessage } from '../../src/protocol/channel.js';
import { withDeadline } from '../../support/deadline.js';
import { frameBytes } from '../../src/transport/frames.js';

/** How the agent ended a connection. */
export type Closed = { code: number; reason: string };

/** One frame, written as is. */
export type RawFrame = { data: Buffer; binary: boolean };

export interface RawClientOptions {
  /**
   * Frames sent in the 'open' event itself, before anything the agent sent along with its
   * handshake answer is read (a close, say): they reach the agent whatever it decided.
   */
  first?: RawFrame[];
  /** Called on every channel message as it arrives, before any wait looks at it. */
  onMessage?: (msg: ServerMessage) => void;
}

/**
 * A WebSocket client that speaks the channel by hand, for hostile-input and fuzz tests: whatever
 * a test sends, it sends, and it keeps every frame the agent sends back.
 */
export class RawClient {
  /** Channel messages from the agent, in order. */
  readonly received: ServerMessage[] = [];
  /** Frames from the agent that are not channel messages: always a failure. */
  readonly garbage: string[] = [];
  closedWith: Closed | undefined;
  private readonly closed: Promise<Closed>;
  /** Called on every frame and on close: the waits in `next` and `holdsWithin` look again. */
  private readonly listeners = new Set<() => void>();

  private constructor(
    private readonly ws: WebSocket,
    onMessage: (msg: ServerMessage) => void = () => undefined,
  ) {
    ws.on('message', (data, isBinary) => {
      const text = frameBytes(data).toString('utf8');
      let parsed: ReturnType<typeof ServerMessageSchema.safeParse> | undefined;
      try {
        parsed = isBinary ? undefined : ServerMessageSchema.safeParse(JSON.parse(text));
      } catch {
        parsed = undefined;
      }
      if (parsed?.success) {
        this.received.push(parsed.data);
        onMessage(parsed.data);
      } else this.garbage.push(text.slice(0, 200));
      this.notify();
    });
    // A hostile frame may be refused while it is still being written: ECONNRESET and the like.
    ws.on('error', () => undefined);
    this.closed = new Promise((resolve) =>
      ws.once('close', (code, reason) => {
        this.closedWith = { code, reason: reason.toString() };
        this.notify();
        resolve(this.closedWith);
      }),
    );
  }

  /** Connects to the channel on loopback `port`, from the local address `from`. */
  static async open(
    port: number,
    from = '127.0.0.1',
    opts: RawClientOptions = {},
  ): Promise<RawClient> {
    const ws = new WebSocket(`ws://127.0.0.1:${port}`, {
      localAddress: from,
      perMessageDeflate: false,
    });
    const client = new RawClient(ws, opts.onMessage);
    await withDeadline(
      new Promise<void>((resolve, reject) => {
        ws.once('open', () => {
          for (const f of opts.first ?? []) ws.send(f.data, { binary: f.binary });
          resolve();
        });
        ws.once('error', reject);
      }),
      'the WebSocket to open',
    );
    return client;
  }

  private notify(): void {
    for (const fn of [...this.listeners]) fn();
  }

  /** Objects go as JSON text, strings as text, Buffers as binary frames. */
  send(msg: unknown): void {
    if (Buffer.isBuffer(msg)) this.ws.send(msg, { binary: true });
    else this.ws.send(typeof msg === 'string' ? msg : JSON.stringify(msg));
  }

  /** A frame with exactly these bytes: as text (UTF-8 or not) or binary. */
  sendFrame(data: Buffer, binary: boolean): void {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(data, { binary });
  }

  /** The first message (received so far or later) that matches; fails if the connection ends first. */
  next<T extends ServerMessage['type']>(
    type: T,
    what: string,
    match: (msg: Extract<ServerMessage, { type: T }>) => boolean = () => true,
  ): Promise<Extract<ServerMessage, { type: T }>> {
    const find = () =>
      this.received.find(
        (m): m is Extract<ServerMessage, { type: T }> =>
          m.type === type && match(m as Extract<ServerMessage, { type: T }>),
      );
    let check = () => undefined as void;
    return withDeadline(
      new Promise<Extract<ServerMessage, { type: T }>>((resolve, reject) => {
        check = () => {
          const found = find();
          if (found) return resolve(found);
          if (this.closedWith)
            reject(
              new Error(
                `closed (${this.closedWith.code} ${this.closedWith.reason}) before ${what}; got ${JSON.stringify(this.received)}`,
              ),
            );
        };
        this.listeners.add(check);
        check();
      }),
      what,
    ).finally(() => this.listeners.delete(check));
  }

  /** Resolves true once `done()` holds (checked on every frame and on close), false after `ms`: never throws. */
  holdsWithin(done: () => boolean, ms: number): Promise<boolean> {
    return new Promise((resolve) => {
      const check = () => {
        if (!done()) return;
        finish(true);
      };
      const timer = setTimeout(() => finish(false), ms);
      const finish = (ok: boolean) => {
        clearTimeout(timer);
        this.listeners.delete(check);
        resolve(ok);
      };
      this.listeners.add(check);
      check();
    });
  }

  /** Resolves when the agent has closed the connection; throws at the test deadline. */
  waitClosed(what: string): Promise<Closed> {
    return withDeadline(this.closed, what);
  }

  errors(): Extract<ServerMessage, { type: 'error' }>[] {
    return this.received.filter(
      (m): m is Extract<ServerMessage, { type: 'error' }> => m.type === 'error',
    );
  }

  /** A clean close if the connection is open, else the socket torn down. */
  close(): void {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.close(1000);
    else this.ws.terminate();
  }

  terminate(): void {
    this.ws.terminate();
  }
}
