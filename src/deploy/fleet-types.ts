import type { DeployEvent, DeployOrigin, DeployOutcome } from '../protocol/channel.js';
import type { SignedManifest } from '../protocol/manifest.js';
import type { Dialer } from '../transport/dialer.js';
import type { BatchSize } from './batches.js';
import type { HostDeployOptions } from './host-deploy.js';
import type { HostFailure } from './preflight.js';

// What a fleet deploy (fleet.ts) takes and what it gives back.

/** One host of the fleet: how to reach its agent and what to call it in messages. */
export interface FleetHost {
  label: string;
  dialer: Dialer;
}

/** What the fleet is asked to do. */
export type FleetTask =
  /** Stage this artifact everywhere, then switch. */
  | { kind: 'deploy'; archive: string; signed: SignedManifest }
  /** Switch to a release the hosts hold already: nothing is sent. */
  | { kind: 'redeploy'; release: string }
  /** Back to the release every host ran before, or to `release`. */
  | { kind: 'rollback'; release?: string };

export type OnFailure = 'rollback' | 'stop' | 'continue';

export interface FleetOptions {
  app: string;
  token: string;
  task: FleetTask;
  strategy: 'parallel' | 'rolling';
  batchSize: BatchSize;
  /** Hosts worked on at once: preflight, uploads, switches within a batch. */
  maxParallel: number;
  onFailure: OnFailure;
  /** How long to wait for a host whose app another deploy holds; 0 fails at once. */
  busyTimeoutMs: number;
  dryRun: boolean;
  origin: DeployOrigin;
  /**
   * The deploy id of one step on one host (`stage`, `switch`, `rollback`, or `undo`: the way
   * back after a failure); the same run asks the same ids, so a reconnect re-attaches.
   */
  deployId: (step: 'stage' | 'switch' | 'rollback' | 'undo', host: string) => string;
  /** Aborted on cancellation or the step's timeout: see runFleet. */
  signal?: AbortSignal;
  connection?: HostDeployOptions;
  /**
   * Awaited once the target is known and every host passed preflight, before the first change
   * (not in a dry run): `gitSha` is the commit the target was built from, when known.
   */
  beforeChange?: (target: string, gitSha: string | undefined) => Promise<void>;
}

/** Where the fleet's progress goes: the action prints it per host, in groups and annotations. */
export interface FleetReporter {
  event(host: string, event: DeployEvent): void;
  sent(host: string, bytes: number, total: number): void;
  note(host: string, line: string): void;
  /** A line about the fleet as a whole: batches, waits, rollbacks. */
  fleet(line: string): void;
  /** A host is done with a step (stage, switch, rollback): its detail may be shown now. */
  stepDone(
    host: string,
    step: HostFailure['step'],
    done: { outcome?: DeployOutcome; failure?: HostFailure },
  ): void;
}

/**
 * Where a host ended. `unchanged`: it ran the target already. `not-switched`: still on what it
 * ran (the fleet stopped before it, or dry run). `rolled-back`: switched, then back on `before`.
 */
export type HostResult = 'switched' | 'unchanged' | 'not-switched' | 'rolled-back' | 'failed';

export interface HostReport {
  host: string;
  result: HostResult;
  /** What it ran at preflight, and before that. */
  before?: string;
  previous?: string;
  /** What it runs now, as far as the agent said. */
  after?: string;
  bytesSent: number;
  /** Milliseconds per phase, stage and switch together (`received`, `unpacked`, `ready`, …). */
  phases: Record<string, number>;
  failure?: HostFailure;
  /** Set when it was rolled back: why. */
  rolledBack?: string;
  /** What a dry run would do here. */
  plan?: string;
}

export interface FleetReport {
  ok: boolean;
  kind: FleetTask['kind'];
  /** The release the fleet was asked to run. */
  target?: string;
  /** The release every host ran before, when they agreed. */
  previous?: string;
  /** The release every host runs now, when they agree. */
  now?: string;
  hosts: HostReport[];
  /** Why the step fails, in one line; undefined when it succeeded. */
  reason?: string;
  cancelled: boolean;
  dryRun: boolean;
  durationMs: number;
}
