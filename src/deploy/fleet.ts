import { setTimeout as sleep } from 'node:timers/promises';
import { BatonError, errorCode, errorMessage } from '../errors.js';
import type { DeployOutcome } from '../protocol/channel.js';
import { AgentLink } from './agent-link.js';
import { batchesOf, eachLimited } from './batches.js';
import type {
  FleetHost,
  FleetOptions,
  FleetReport,
  FleetReporter,
  FleetTask,
  HostReport,
} from './fleet-types.js';
import { deployToHost, type HostPlan } from './host-deploy.js';
import {
  cannotSwitchTo,
  failure,
  FLEET_PROTOCOL,
  preflightHost,
  rollbackTarget,
  type HostFacts,
  type HostFailure,
} from './preflight.js';

/**
 * Deploys to a fleet in two passes. Preflight every host (reach it, read what it runs and
 * holds; any host that cannot take part fails the step and nothing changes anywhere); stage
 * the release everywhere (upload, verify, unpack: no handover); then switch in batches. A
 * failed host stops the later batches (`stop`, `rollback`) or not (`continue`); with
 * `rollback` every host switched so far goes back to what it ran, so the fleet ends on one
 * version. When `signal` aborts (cancellation, timeout): uploads stop, no further host is
 * switched, a switch under way is followed to its end, and `rollback` applies as for a failure.
 */
export async function runFleet(
  hosts: readonly FleetHost[],
  opts: FleetOptions,
  reporter: FleetReporter,
): Promise<FleetReport> {
  const links = new Map(
    hosts.map((h) => [h.label, new AgentLink(h.dialer, opts.token, opts.connection?.heartbeatMs)]),
  );
  try {
    return await deployFleet(hosts, opts, reporter, links);
  } finally {
    for (const link of links.values()) link.drop();
  }
}

async function deployFleet(
  hosts: readonly FleetHost[],
  opts: FleetOptions,
  reporter: FleetReporter,
  links: ReadonlyMap<string, AgentLink>,
): Promise<FleetReport> {
  const started = Date.now();
  const reports = new Map<string, HostReport>(
    hosts.map((h) => [
      h.label,
      { host: h.label, result: 'not-switched', bytesSent: 0, phases: {} },
    ]),
  );
  const end = (reason: string | undefined, extra: Partial<FleetReport> = {}): FleetReport => {
    const list = [...reports.values()];
    const now = new Set(list.map((r) => r.after));
    const before = new Set(list.map((r) => r.before));
    return {
      ok: reason === undefined,
      kind: opts.task.kind,
      hosts: list,
      ...(reason !== undefined && { reason }),
      ...(now.size === 1 && [...now][0] !== undefined && { now: [...now][0] }),
      ...(before.size === 1 && [...before][0] !== undefined && { previous: [...before][0] }),
      cancelled: opts.signal?.aborted ?? false,
      dryRun: opts.dryRun,
      durationMs: Date.now() - started,
      ...extra,
    };
  };
  const byLabel = new Map(hosts.map((h) => [h.label, h]));

  // 1. Preflight: every host, before any change.
  reporter.fleet(`preflight: reaching ${hosts.length} host${hosts.length === 1 ? '' : 's'}`);
  const needs = opts.task.kind === 'rollback' ? 1 : FLEET_PROTOCOL;
  const facts = new Map<string, HostFacts>();
  const preflight = await eachLimited(hosts, opts.maxParallel, async (h) => {
    try {
      const f = await preflightHost(links.get(h.label)!, opts.app, needs);
      facts.set(h.label, f);
      const r = reports.get(h.label)!;
      if (f.current !== undefined) r.before = r.after = f.current;
      if (f.previous !== undefined) r.previous = f.previous;
      reporter.note(
        h.label,
        `${f.agent}: ${opts.app} runs ${f.current ?? 'no release'} (${f.state}), ran ${f.previous ?? 'none'} before; holds ${f.releases.length} release${f.releases.length === 1 ? '' : 's'}`,
      );
      return undefined;
    } catch (err) {
      return { host: h.label, failure: failure('preflight', err) };
    }
  });
  const unreachable = preflight.filter((p) => p !== undefined);
  for (const p of unreachable) {
    const r = reports.get(p.host)!;
    r.result = 'failed';
    r.failure = p.failure;
    reporter.stepDone(p.host, 'preflight', { failure: p.failure });
  }
  if (unreachable.length > 0)
    return end(
      `${unreachable.map((p) => p.host).join(', ')} failed preflight; nothing was changed on any host`,
    );

  if (opts.signal?.aborted) return end(`${abortReason(opts.signal)} before any change`);

  // 2. The target, and which hosts need it.
  let target: string;
  try {
    target =
      opts.task.kind === 'deploy'
        ? opts.task.signed.manifest.releaseId
        : opts.task.kind === 'redeploy'
          ? opts.task.release
          : rollbackTarget(facts, opts.task.release);
  } catch (err) {
    return end(errorMessage(err));
  }
  const todo: FleetHost[] = [];
  const refusals: string[] = [];
  for (const h of hosts) {
    const f = facts.get(h.label)!;
    const r = reports.get(h.label)!;
    if (f.current === target) {
      r.result = 'unchanged';
      reporter.note(h.label, `already runs ${target}: left as it is`);
      continue;
    }
    // A deploy may bring a release the host holds (staged before, or rolled away from) unless
    // the host marked it failed or no longer trusts it: that would surface only at its switch.
    if (opts.task.kind !== 'deploy' || f.releases.some((r) => r.id === target)) {
      const why = cannotSwitchTo(f, target);
      if (why) {
        r.result = 'failed';
        r.failure = failure('preflight', new BatonError('RELEASE_UNKNOWN', why));
        refusals.push(`${h.label} ${why}`);
        continue;
      }
    }
    todo.push(h);
  }
  if (refusals.length > 0)
    return end(`${refusals.join('; ')}; nothing was changed on any host`, { target });

  if (opts.dryRun) {
    for (const h of todo) {
      const r = reports.get(h.label)!;
      r.plan = dryRunPlan(opts.task, facts.get(h.label)!, target);
      reporter.note(h.label, `dry run: would ${r.plan}`);
    }
    reporter.fleet(
      `dry run: nothing was changed; ${todo.length} of ${hosts.length} would switch to ${target}`,
    );
    return end(undefined, { target });
  }

  if (todo.length > 0 && opts.beforeChange && !opts.signal?.aborted) {
    const gitSha =
      opts.task.kind === 'deploy'
        ? opts.task.signed.manifest.git?.sha
        : [...facts.values()].flatMap((f) => f.releases).find((r) => r.id === target)?.gitSha;
    await opts.beforeChange(target, gitSha);
  }

  // 3. Stage everywhere first: a host that cannot take the release fails the step before any switch.
  if (opts.task.kind === 'deploy' && todo.length > 0) {
    const task = opts.task;
    reporter.fleet(
      `stage: sending ${target} to ${todo.length} host${todo.length === 1 ? '' : 's'}`,
    );
    const staged = await eachLimited(todo, opts.maxParallel, async (h) => {
      if (opts.signal?.aborted) return false;
      const plan: HostPlan = {
        kind: 'stage',
        deployId: opts.deployId('stage', h.label),
        app: opts.app,
        manifest: task.signed,
        archive: task.archive,
        origin: opts.origin,
      };
      return step(h, plan, 'stage', true);
    });
    if (opts.signal?.aborted)
      return end(`${abortReason(opts.signal)} while staging; no host was switched`, { target });
    if (staged.includes(false)) {
      const failed = todo.filter((_, i) => !staged[i]).map((h) => h.label);
      return end(`${failed.join(', ')} could not stage ${target}; no host was switched`, {
        target,
      });
    }
  }

  // 4. Switch, batch by batch.
  const batches = batchesOf(todo, opts.strategy, opts.batchSize);
  if (todo.length > 0)
    reporter.fleet(
      `switch: ${todo.length} host${todo.length === 1 ? '' : 's'} to ${target}, ${opts.strategy}${batches.length > 1 ? ` in ${batches.length} batches` : ''}`,
    );
  const switched: string[] = [];
  const failedHosts: string[] = [];
  let stopped: string | undefined;
  for (const [i, batch] of batches.entries()) {
    if (opts.signal?.aborted) {
      stopped = 'cancelled';
      break;
    }
    if (batches.length > 1)
      reporter.fleet(
        `batch ${i + 1} of ${batches.length}: ${batch.map((h) => h.label).join(', ')} (${switched.length} of ${todo.length} switched so far)`,
      );
    await eachLimited(batch, opts.maxParallel, async (h) => {
      // Cancelled: the hosts of this batch not yet begun stay as they are.
      if (opts.signal?.aborted) return;
      const plan: HostPlan =
        opts.task.kind === 'rollback'
          ? {
              kind: 'rollback',
              deployId: opts.deployId('rollback', h.label),
              app: opts.app,
              to: target,
              origin: opts.origin,
            }
          : {
              kind: 'switch',
              deployId: opts.deployId('switch', h.label),
              app: opts.app,
              to: target,
              origin: opts.origin,
            };
      const ok = await step(h, plan, 'switch', false);
      (ok ? switched : failedHosts).push(h.label);
    });
    if (failedHosts.length > 0 && opts.onFailure !== 'continue') {
      stopped = `${failedHosts.join(', ')} failed`;
      break;
    }
  }
  if (opts.signal?.aborted) stopped ??= 'cancelled';

  // 5. Back, when asked: every host this run switched (or left broken after its switch).
  const rollBack =
    opts.onFailure === 'rollback' && (failedHosts.length > 0 || opts.signal?.aborted === true);
  if (rollBack) {
    const why = opts.signal?.aborted
      ? 'the deploy was cancelled'
      : `${failedHosts.join(', ')} failed`;
    const back = [...reports.values()].filter(
      (r) =>
        r.before !== undefined &&
        (r.result === 'switched' || (r.result === 'failed' && r.after !== r.before)),
    );
    if (back.length > 0)
      reporter.fleet(`rolling back ${back.map((r) => r.host).join(', ')} because ${why}`);
    await eachLimited(back, opts.maxParallel, async (r) => {
      const plan: HostPlan = {
        kind: 'rollback',
        deployId: opts.deployId('undo', r.host),
        app: opts.app,
        to: r.before!,
        origin: opts.origin,
      };
      const wasFailed = r.result === 'failed';
      if (await step(byLabel.get(r.host)!, plan, 'rollback', false)) {
        r.result = wasFailed ? 'failed' : 'rolled-back';
        r.rolledBack = why;
      }
    });
  }

  const failedNow = [...reports.values()].filter((r) => r.result === 'failed').map((r) => r.host);
  // Hosts that ran nothing before this run have nothing to go back to: say so.
  const noWayBack = [...reports.values()]
    .filter((r) => rollBack && r.before === undefined && r.after !== undefined)
    .map((r) => r.host);
  const back = rollBack
    ? `; the hosts switched by this run were rolled back${noWayBack.length ? ` (except ${noWayBack.join(', ')}, which ran no release before and stay on ${target})` : ''}`
    : '';
  const reason =
    stopped === 'cancelled'
      ? `${abortReason(opts.signal)}${back}`
      : failedNow.length > 0
        ? `${failedNow.join(', ')} failed${rollBack ? back : opts.onFailure === 'stop' ? '; no further host was switched' : ''}`
        : undefined;
  return end(reason, { target });

  /**
   * One step on one host, to its outcome, waiting while another deploy holds the app. Records
   * what it did in the host's report; returns whether it succeeded.
   */
  async function step(
    h: FleetHost,
    plan: HostPlan,
    name: HostFailure['step'],
    cancellable: boolean,
  ): Promise<boolean> {
    const r = reports.get(h.label)!;
    let phase: string | undefined;
    try {
      const outcome = await whileBusy(h.label, async () =>
        deployToHost(
          h.dialer,
          opts.token,
          plan,
          {
            event: (e) => {
              // The last step it reached: `failed` itself says nothing of where.
              if (e.type === 'phase' && e.phase !== 'failed' && e.phase !== 'crashed')
                phase = e.phase;
              reporter.event(h.label, e);
            },
            sent: (bytes, total) => reporter.sent(h.label, bytes, total),
            note: (line) => reporter.note(h.label, line),
          },
          {
            ...opts.connection,
            link: links.get(h.label)!,
            ...(cancellable && opts.signal && { signal: opts.signal }),
          },
        ),
      );
      r.bytesSent += outcome.uploadedBytes;
      for (const [k, ms] of Object.entries(outcome.phases)) r.phases[k] = (r.phases[k] ?? 0) + ms;
      // Switched already (a switch sent again after the agent restarted): it runs the target.
      if (outcome.error?.code === 'ALREADY_CURRENT' && plan.kind === 'switch') {
        r.after = plan.to;
        r.result = 'switched';
        reporter.stepDone(h.label, name, { outcome });
        return true;
      }
      if (outcome.ok) {
        if (name !== 'stage') {
          r.after = outcome.releaseId;
          r.result = name === 'rollback' ? 'rolled-back' : 'switched';
        }
        reporter.stepDone(h.label, name, { outcome });
        return true;
      }
      const err = outcome.error!;
      r.result = 'failed';
      r.failure = failure(name, new BatonError(err.code as never, err.message, err.lines), phase);
      // Past the switch the old generation is gone: what runs is not what ran before.
      if ('switched' in outcome.phases) r.after = outcome.releaseId;
      reporter.stepDone(h.label, name, { outcome, failure: r.failure });
      return false;
    } catch (err) {
      // Cut off by the cancellation while staging: nothing changed there.
      if (name === 'stage' && errorCode(err) === 'DEPLOY_ABORTED') return false;
      r.result = 'failed';
      r.failure = failure(name, err, phase);
      // The handover may have gone on without us: ask the host what it runs now.
      if (name !== 'stage') r.after = await runsNow(h);
      reporter.stepDone(h.label, name, { failure: r.failure });
      return false;
    }
  }

  /** What a host runs now, asked on a new connection; undefined when it cannot be asked. */
  async function runsNow(h: FleetHost): Promise<string | undefined> {
    try {
      return (await preflightHost(links.get(h.label)!, opts.app, 1)).current;
    } catch (err) {
      reporter.note(h.label, `cannot tell what it runs now: ${errorMessage(err)}`);
      return undefined;
    }
  }

  /** Runs `attempt` again while the host answers DEPLOY_BUSY, up to busyTimeoutMs. */
  async function whileBusy(
    host: string,
    attempt: () => Promise<DeployOutcome>,
  ): Promise<DeployOutcome> {
    const deadline = Date.now() + opts.busyTimeoutMs;
    let said = '';
    for (;;) {
      let busy: string;
      try {
        const outcome = await attempt();
        if (outcome.error?.code !== 'DEPLOY_BUSY') return outcome;
        busy = outcome.error.message;
      } catch (err) {
        if (errorCode(err) !== 'DEPLOY_BUSY') throw err;
        busy = errorMessage(err);
      }
      const left = deadline - Date.now();
      if (left <= 0 || opts.signal?.aborted)
        throw new BatonError(
          'DEPLOY_BUSY',
          `${busy}${opts.busyTimeoutMs > 0 ? ` (waited ${Math.round(opts.busyTimeoutMs / 1000)} s, the busy-timeout)` : '; set busy-timeout to wait for it'}`,
        );
      if (busy !== said)
        reporter.note(host, `${busy}; waiting up to ${Math.ceil(left / 1000)} s more`);
      said = busy;
      await sleep(Math.min(2000, left), undefined, opts.signal && { signal: opts.signal }).catch(
        () => undefined,
      );
    }
  }
}

function dryRunPlan(task: FleetTask, f: HostFacts, target: string): string {
  const from = f.current ?? 'no release';
  if (task.kind !== 'deploy') return `switch from ${from} to ${target} (held: nothing to send)`;
  const held = f.releases.some((r) => r.digest === task.signed.manifest.archive.sha256);
  const bytes = held ? 0 : task.signed.manifest.archive.size;
  return `send ${bytes} bytes${held ? ' (it holds this artifact)' : ''}, then switch from ${from} to ${target}`;
}

/** How a run that was stopped says so: its timeout, or a cancellation. */
function abortReason(signal: AbortSignal | undefined): string {
  const reason: unknown = signal?.reason;
  return reason instanceof Error && reason.name === 'TimeoutError'
    ? 'stopped at the timeout'
    : 'cancelled';
}
