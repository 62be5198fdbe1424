import { PassThrough } from 'node:stream';
import type { DeploySession } from './deploy-session.js';

/** Progress events at most this often during an upload. */
const PROGRESS_EVERY_MS = 250;

/**
 * The artifact bytes of one deploy as they come over a connection, into a stream the store
 * reads: with backpressure (the socket is paused while the store is behind), progress events,
 * and an idle deadline. The connection decides when it ends; this carries the bytes.
 */
export class UploadSink {
  /** What the store reads: a few frames in flight, then the socket is paused. */
  readonly stream = new PassThrough({ highWaterMark: 4 * 1024 * 1024 });
  received = 0;
  private lastProgress = 0;
  /** Ends the upload when no byte came for `idleMs`. */
  private readonly idle: NodeJS.Timeout;

  constructor(
    readonly session: DeploySession,
    readonly total: number,
    private readonly socket: { pause(): void; resume(): void },
    idleMs: number,
    /** No byte for `idleMs`: the connection ends the upload. */
    stalled: () => void,
  ) {
    // However the upload ends (whole, cut, refused by the store), the socket reads again: a
    // pause waiting for a 'drain' that an ended stream never emits would leave it deaf to
    // pongs and close frames.
    this.stream.once('close', () => {
      clearTimeout(this.idle);
      socket.resume();
    });
    // A client that stops sending (while its socket still answers pings) must not hold the app
    // and the store for ever.
    this.idle = setTimeout(stalled, idleMs);
    this.idle.unref();
    // The store may refuse before it reads a byte (ARCHIVE_TOO_LARGE): then nothing listens, and
    // destroying the stream with an error (the client leaving) would throw and end the agent.
    this.stream.on('error', () => undefined);
  }

  /** Whether `bytes` more would pass what the agent asked for. */
  overflows(bytes: number): boolean {
    return this.received + bytes > this.total;
  }

  /** Takes a chunk; true when it was the last one (the stream has ended then). */
  take(chunk: Buffer): boolean {
    this.received += chunk.length;
    this.idle.refresh();
    if (!this.stream.write(chunk)) {
      this.socket.pause();
      this.stream.once('drain', () => this.socket.resume());
    }
    const now = Date.now();
    const last = this.received === this.total;
    if (last || now - this.lastProgress >= PROGRESS_EVERY_MS) {
      this.lastProgress = now;
      this.session.emit({
        type: 'progress',
        at: new Date(now).toISOString(),
        app: this.session.info.app,
        bytes: this.received,
        total: this.total,
      });
    }
    if (last) {
      clearTimeout(this.idle);
      this.stream.end();
    }
    return last;
  }

  /** Ends the upload with `err` (or quietly): the deploy reading it fails with that. */
  fail(err?: Error): void {
    this.stream.destroy(err);
  }
}
