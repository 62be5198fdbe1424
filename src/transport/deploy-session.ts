import { BatonError, errorCode, errorMessage } from '../errors.js';
import type {
  DeployEvent,
  DeployOrigin,
  DeployOutcome,
  ServerMessage,
} from '../protocol/channel.js';

/**
 * What a running session keeps of its log lines and upload progress for re-attaching clients:
 * past either limit they are passed on live but not kept. Phases and the result are always kept.
 */
const MAX_KEPT_DETAIL_MESSAGES = 5000;
const MAX_KEPT_DETAIL_BYTES = 1024 * 1024;
/** Roughly what a kept event costs beyond its log line: the envelope, the timestamp, the fields. */
const EVENT_OVERHEAD_BYTES = 160;

export type SessionMessage = Extract<ServerMessage, { type: 'event' } | { type: 'result' }>;
type Listener = (msg: SessionMessage) => void;

export interface SessionInfo {
  deployId: string;
  kind: DeployOutcome['kind'];
  app: string;
  origin: DeployOrigin;
  /**
   * The artifact's digest (a deploy, a stage) or the release asked for (a rollback, a switch):
   * same id, same thing.
   */
  subject: string;
}

/**
 * One deploy, rollback, stage or switch on the agent, independent of any connection: it runs to its end
 * whether or not a client listens. Its events are numbered, kept (bounded), and replayed to a
 * client that re-attaches; the outcome stays after the end.
 */
export class DeploySession {
  private kept: SessionMessage[] = [];
  private keptDetail = { messages: 0, bytes: 0 };
  private readonly listeners = new Set<Listener>();
  private seq = 0;
  private readonly startedAt: number;
  private readonly phases: Record<string, number> = {};
  private lastPhaseAt: number;
  outcome: DeployOutcome | undefined;
  /** Settles when the session has its outcome. */
  readonly done: Promise<DeployOutcome>;
  private settle: (o: DeployOutcome) => void = () => undefined;

  constructor(
    readonly info: SessionInfo,
    /** The wall clock (ms since the epoch); a test may pass one that steps back. */
    private readonly clock: () => number = Date.now,
  ) {
    this.done = new Promise((resolve) => (this.settle = resolve));
    this.startedAt = clock();
    this.lastPhaseAt = this.startedAt;
  }

  get deployId(): string {
    return this.info.deployId;
  }

  private publish(msg: SessionMessage): void {
    if (msg.type === 'result' || msg.event.type === 'phase') this.kept.push(msg);
    else this.keepDetail(msg, msg.event);
    for (const fn of this.listeners) fn(msg);
  }

  /** Keeps a log line or progress event while the session is under its limits for them. */
  private keepDetail(msg: SessionMessage, event: Exclude<DeployEvent, { type: 'phase' }>): void {
    const bytes =
      EVENT_OVERHEAD_BYTES +
      (event.type === 'log' ? Buffer.byteLength(event.line) + event.source.length : 0);
    const kept = this.keptDetail;
    if (kept.messages >= MAX_KEPT_DETAIL_MESSAGES || kept.bytes + bytes > MAX_KEPT_DETAIL_BYTES)
      return;
    kept.messages++;
    kept.bytes += bytes;
    this.kept.push(msg);
  }

  emit(event: DeployEvent): void {
    if (this.outcome) return;
    if (event.type === 'phase') {
      // Per-phase durations: time from the previous step to this one.
      const key = event.hook ? `${event.phase}:${event.hook}` : event.phase;
      const now = Date.parse(event.at) || this.clock();
      this.phases[key] = (this.phases[key] ?? 0) + Math.max(0, now - this.lastPhaseAt);
      this.lastPhaseAt = now;
    }
    this.publish({ type: 'event', deployId: this.deployId, seq: ++this.seq, event });
  }

  /** Ends the session: `result` on success, the error otherwise. Only the first call counts. */
  finish(
    result:
      | {
          releaseId?: string;
          previousReleaseId?: string;
          generation?: number;
          cold?: boolean;
          uploadedBytes: number;
        }
      | { error: unknown; uploadedBytes: number },
  ): DeployOutcome {
    if (this.outcome) return this.outcome;
    const finishedAt = this.clock();
    const base = {
      deployId: this.deployId,
      kind: this.info.kind,
      app: this.info.app,
      phases: { ...this.phases },
      // A wall clock stepped back (NTP, a VM resumed) must not make a negative duration.
      totalMs: Math.max(0, finishedAt - this.startedAt),
      startedAt: new Date(this.startedAt).toISOString(),
      finishedAt: new Date(finishedAt).toISOString(),
    };
    let outcome: DeployOutcome;
    if ('error' in result) {
      const err = result.error;
      outcome = {
        ...base,
        ok: false,
        uploadedBytes: result.uploadedBytes,
        error: {
          code: errorCode(err) ?? 'DEPLOY_FAILED',
          message: errorMessage(err),
          lines: err instanceof BatonError ? [...err.lines] : [],
        },
      };
    } else {
      outcome = { ...base, ok: true, ...result };
    }
    this.outcome = outcome;
    this.publish({ type: 'result', deployId: this.deployId, seq: ++this.seq, outcome });
    this.listeners.clear();
    // A finished session is kept (up to keepResults of them) for clients that re-attach: its
    // phases and result are what they need; its log lines could be megabytes each.
    this.kept = this.kept.filter((m) => m.type === 'result' || m.event.type === 'phase');
    this.keptDetail = { messages: 0, bytes: 0 };
    this.settle(outcome);
    return outcome;
  }

  /**
   * Sends the messages numbered above `after`, then live ones until the end. Returns the
   * function that stops listening (a client that leaves).
   */
  attach(after: number, fn: Listener): () => void {
    for (const msg of this.kept) if (msg.seq > after) fn(msg);
    if (this.outcome) return () => undefined;
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** True when a new request with this id is the same deploy as this one. */
  sameAs(info: SessionInfo): boolean {
    return (
      info.kind === this.info.kind &&
      info.app === this.info.app &&
      info.subject === this.info.subject
    );
  }

  /**
   * A deploy that changed nothing may run again under the same id: its upload never arrived
   * whole, or it was refused because another deploy of the app was under way.
   */
  get retryable(): boolean {
    const code = this.outcome?.error?.code;
    return code === 'UPLOAD_INCOMPLETE' || code === 'DEPLOY_BUSY';
  }
}

/**
 * Every session the agent knows: running ones (one per app at a time) and finished ones, the
 * oldest forgotten past `keep`.
 */
export class SessionRegistry {
  private readonly byId = new Map<string, DeploySession>();
  private readonly running = new Map<string, DeploySession>();
  /**
   * Set while no new session may start (the agent is starting its apps, or being upgraded): the
   * reason, sent with DEPLOY_BUSY. Sessions already running carry on; attaching still works.
   */
  closed: string | undefined;

  constructor(private readonly keep: number) {}

  get(deployId: string): DeploySession | undefined {
    return this.byId.get(deployId);
  }

  /** The session running for an app, if any. */
  active(app: string): DeploySession | undefined {
    return this.running.get(app);
  }

  get activeCount(): number {
    return this.running.size;
  }

  /**
   * Starts a session, or throws DEPLOY_BUSY when the app has one running or the registry is
   * closed. The session leaves the running set when it finishes.
   */
  begin(info: SessionInfo): DeploySession {
    if (this.closed !== undefined) throw new BatonError('DEPLOY_BUSY', `busy: ${this.closed}`);
    const busy = this.running.get(info.app);
    if (busy)
      throw new BatonError(
        'DEPLOY_BUSY',
        `busy: ${busy.info.kind} ${busy.deployId} by ${busy.info.origin.actor} in progress for ${info.app}; wait for it to end (or attach to it with its deploy id)`,
      );
    const session = new DeploySession(info);
    this.byId.delete(info.deployId);
    this.byId.set(info.deployId, session);
    this.running.set(info.app, session);
    void session.done.then(() => {
      if (this.running.get(info.app) === session) this.running.delete(info.app);
      this.forgetOld();
    });
    return session;
  }

  private forgetOld(): void {
    for (const [id, s] of this.byId) {
      if (this.byId.size <= this.keep) break;
      if (s.outcome) this.byId.delete(id);
    }
  }
}
