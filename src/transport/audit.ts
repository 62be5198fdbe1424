import { appendFile, mkdir, rename, stat } from 'node:fs/promises';
import path from 'node:path';
import type { DeployOrigin, DeployOutcome } from '../protocol/channel.js';

/** What an unauthenticated peer can make the agent write: these are summarised, not each logged. */
export type RefusalEvent = 'auth-failed' | 'auth-rate-limited' | 'connection-refused';

/** One line of the audit log: who did what, when, from where, and how it ended. */
export type AuditEntry =
  | { event: RefusalEvent; peer: string; reason: string }
  | {
      event: 'refusals-summary';
      peer: string;
      /** Refusals of this peer in the window not logged one by one. */
      count: number;
      byEvent: Partial<Record<RefusalEvent, number>>;
      since: string;
    }
  | { event: 'connected'; peer: string; client: string }
  | {
      event: 'deploy-started' | 'deploy-attached';
      peer: string;
      deployId: string;
      kind: DeployOutcome['kind'];
      app: string;
      subject: string;
      origin: DeployOrigin;
    }
  | {
      event: 'deploy-finished';
      deployId: string;
      kind: DeployOutcome['kind'];
      app: string;
      origin: DeployOrigin;
      ok: boolean;
      releaseId?: string;
      previousReleaseId?: string;
      uploadedBytes: number;
      totalMs: number;
      code?: string;
      message?: string;
    };

export interface AuditOptions {
  /** Past this size the file becomes `<file>.1` and a new one starts. */
  maxBytes: number;
  /** Refusals are summarised per peer over windows this long. */
  windowMs: number;
  /** Refusals per peer per window logged one by one before the rest are only counted. */
  refusalsLogged?: number;
  onError: (message: string) => void;
}

/** Peers tracked apart within a window; past this, further peers are counted together as `*`. */
const MAX_PEERS_PER_WINDOW = 1000;
const DEFAULT_REFUSALS_LOGGED = 5;

interface PeerRefusals {
  logged: number;
  suppressed: number;
  byEvent: Partial<Record<RefusalEvent, number>>;
}

/**
 * Appends JSON lines to a file only the agent's user can read (mode 0600), in order. A write that
 * fails is reported to `onError` and never stops a deploy. What strangers can cause is bounded:
 * refusals are summarised per peer and window, and the file is rotated past `maxBytes`, one old
 * file kept.
 */
export class AuditLog {
  private queue: Promise<void> = Promise.resolve();
  /** Bytes in the file, learned at the first write. */
  private size: number | undefined;
  private window:
    { since: Date; peers: Map<string, PeerRefusals>; timer: NodeJS.Timeout } | undefined;

  constructor(
    readonly file: string,
    private readonly opts: AuditOptions,
  ) {}

  record(entry: AuditEntry): void {
    const line = JSON.stringify({ at: new Date().toISOString(), ...entry }) + '\n';
    this.queue = this.queue
      .then(() => this.append(line))
      .catch((err: unknown) =>
        this.opts.onError(
          `audit log ${this.file}: ${err instanceof Error ? err.message : String(err)}`,
        ),
      );
  }

  /**
   * A refused peer: logged as it is for the first few per peer in the window, then counted
   * into one `refusals-summary` line written when the window ends. True when logged as it is
   * (the caller's own log line should follow the same rule).
   */
  refusal(entry: { event: RefusalEvent; peer: string; reason: string }): boolean {
    if (!this.window) {
      const timer = setTimeout(() => this.endWindow(), this.opts.windowMs);
      timer.unref();
      this.window = { since: new Date(), peers: new Map(), timer };
    }
    const { peers } = this.window;
    const key = peers.has(entry.peer) || peers.size < MAX_PEERS_PER_WINDOW ? entry.peer : '*';
    let seen = peers.get(key);
    if (!seen) peers.set(key, (seen = { logged: 0, suppressed: 0, byEvent: {} }));
    if (key === entry.peer && seen.logged < (this.opts.refusalsLogged ?? DEFAULT_REFUSALS_LOGGED)) {
      seen.logged++;
      this.record(entry);
      return true;
    }
    seen.suppressed++;
    seen.byEvent[entry.event] = (seen.byEvent[entry.event] ?? 0) + 1;
    return false;
  }

  /** Writes the summary of the window now ending: one line per peer that had refusals unlogged. */
  private endWindow(): void {
    const window = this.window;
    if (!window) return;
    this.window = undefined;
    clearTimeout(window.timer);
    for (const [peer, seen] of window.peers)
      if (seen.suppressed > 0)
        this.record({
          event: 'refusals-summary',
          peer,
          count: seen.suppressed,
          byEvent: seen.byEvent,
          since: window.since.toISOString(),
        });
  }

  private async append(line: string): Promise<void> {
    if (this.size === undefined) {
      await mkdir(path.dirname(this.file), { recursive: true, mode: 0o700 });
      this.size = await stat(this.file).then(
        (s) => s.size,
        () => 0,
      );
    }
    const bytes = Buffer.byteLength(line);
    if (this.size > 0 && this.size + bytes > this.opts.maxBytes) {
      await rename(this.file, `${this.file}.1`);
      this.size = 0;
    }
    await appendFile(this.file, line, { mode: 0o600 });
    this.size += bytes;
  }

  /** Resolves once every entry recorded so far is on disk. */
  flush(): Promise<void> {
    return this.queue;
  }

  /** Writes the open window's summary, then flushes. */
  close(): Promise<void> {
    this.endWindow();
    return this.flush();
  }
}
