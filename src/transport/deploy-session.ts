import { BatonError, errorCode, errorMessage } from '../errors.js';
import type {
  DeployEvent,
  DeployOrigin,
  DeployOutcome,
  ServerMessage,
} from '../protocol/channel.js';

/** Messages a session keeps for re-attaching clients; past it, log lines and progress are not kept. */
const MAX_KEPT_MESSAGES = 5000;

export type SessionMessage = Extract<ServerMessage, { type: 'event' } | { type: 'result' }>;
type Listener = (msg: SessionMessage) => void;

export interface SessionInfo {
  deployId: string;
  kind: 'deploy' | 'rollback';
  app: string;
  origin: DeployOrigin;
  /** The artifact's digest (a deploy) or the release asked for (a rollback): same id, same thing. */
  subject: string;
}

/**
 * One deploy or rollback on the agent, independent of any connection: it runs to its end
 * whether or not a client listens. Its events are numbered, kept (bounded), and replayed to a
 * client that re-attaches; the outcome stays after the end.
 */
export class DeploySession {
  private readonly kept: SessionMessage[] = [];
  private readonly listeners = new Set<Listener>();
  private seq = 0;
  private readonly startedAt = new Date();
  private readonly phases: Record<string, number> = {};
  private lastPhaseAt = Date.now();
  outcome: DeployOutcome | undefined;
  /** Settles when the session has its outcome. */
  readonly done: Promise<DeployOutcome>;
  private settle: (o: DeployOutcome) => void = () => undefined;

  constructor(readonly info: SessionInfo) {
    this.done = new Promise((resolve) => (this.settle = resolve));
  }

  get deployId(): string {
    return this.info.deployId;
  }

  private publish(msg: SessionMessage): void {
    const droppable = msg.type === 'event' && msg.event.type !== 'phase';
    if (this.kept.length < MAX_KEPT_MESSAGES || !droppable) this.kept.push(msg);
    for (const fn of this.listeners) fn(msg);
  }

  emit(event: DeployEvent): void {
    if (this.outcome) return;
    if (event.type === 'phase') {
      // Per-phase durations: time from the previous step to this one.
      const key = event.hook ? `${event.phase}:${event.hook}` : event.phase;
      const now = Date.parse(event.at) || Date.now();
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
    const finishedAt = new Date();
    const base = {
      deployId: this.deployId,
      kind: this.info.kind,
      app: this.info.app,
      phases: this.phases,
      totalMs: finishedAt.getTime() - this.startedAt.getTime(),
      startedAt: this.startedAt.toISOString(),
      finishedAt: finishedAt.toISOString(),
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

  /** A deploy whose upload never arrived whole changed nothing: the same id may run again. */
  get retryable(): boolean {
    return this.outcome?.error?.code === 'UPLOAD_INCOMPLETE';
  }
}

/**
 * Every session the agent knows: running ones (one per app at a time) and finished ones, the
 * oldest forgotten past `keep`.
 */
export class SessionRegistry {
  private readonly byId = new Map<string, DeploySession>();
  private readonly running = new Map<string, DeploySession>();

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
   * Starts a session, or throws DEPLOY_BUSY when the app has one running. The session leaves the
   * running set when it finishes.
   */
  begin(info: SessionInfo): DeploySession {
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
