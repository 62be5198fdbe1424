// `npm run bench:handover`: full-speed load against the fixture app under the agent while it
// hands over once a second, and the same load against a naive stop-then-start restart.
// Exits 1 when baton misses the bar (0 errors, 0 non-2xx, p99 ≤ 1.5× steady state).
// A third contestant is a real server that speaks systemd's protocols, unmodified: Debian's
// gunicorn under the agent (readiness type `systemd`). Its bar is 0 failed requests (a miss
// exits 1 too); its p99 is reported against the same factor but does not fail the run.
import { mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import {
  gunicornVersion,
  startBaton,
  startGunicorn,
  startNaive,
  type Contestant,
} from './contestants.js';
import {
  byRelease,
  failures,
  latencySummary,
  type LoadResult,
  startLoad,
} from '../support/load-client.js';
import { tempDir } from '../support/temp-dir.js';
import { everyPeriod, type CycleStats } from './ticker.js';
import { fmtErrors, fmtInt, fmtMs, formatTable, total, type Column } from './table.js';
import { runWrk, type WrkResult } from './wrk.js';
import { cleanupOnSignal } from './interrupt.js';

type Mode = 'keep-alive' | 'new-connection';

function envInt(name: string, fallback: number, min: number, max: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max)
    throw new Error(`${name}=${raw}: expected an integer from ${min} to ${max}`);
  return value;
}

function envModes(): Mode[] {
  const raw = process.env.BENCH_MODES ?? 'keep-alive,new-connection';
  const modes = raw.split(',').map((m) => m.trim());
  for (const m of modes)
    if (m !== 'keep-alive' && m !== 'new-connection')
      throw new Error(`BENCH_MODES=${raw}: use keep-alive, new-connection or both`);
  return modes as Mode[];
}

const settings = {
  /** Load under handovers, per contestant and mode (wrk). */
  seconds: envInt('BENCH_SECONDS', 20, 2, 600),
  /** Unrecorded wrk run before each steady state, so the reference is a warm app (JIT, caches). */
  warmupSeconds: envInt('BENCH_WARMUP_SECONDS', 3, 0, 600),
  /** Steady-state reference run, no handovers (wrk). */
  steadySeconds: envInt('BENCH_STEADY_SECONDS', 10, 1, 600),
  /** Node-client cross-check under handovers, per contestant and mode. */
  nodeSeconds: envInt('BENCH_NODE_SECONDS', 10, 0, 600),
  threads: envInt('BENCH_THREADS', 2, 1, 64),
  connections: envInt('BENCH_CONNECTIONS', 50, 1, 10_000),
  nodeWorkers: envInt('BENCH_NODE_WORKERS', 50, 1, 10_000),
  /** A request waiting this long counts as a timeout (wrk and the Node client). */
  timeoutSeconds: envInt('BENCH_TIMEOUT_SECONDS', 5, 1, 60),
  periodMs: envInt('BENCH_PERIOD_MS', 1000, 100, 60_000),
  modes: envModes(),
  /** The gunicorn contestant (BENCH_GUNICORN=0 leaves it out, and says so in the report). */
  gunicorn: process.env.BENCH_GUNICORN !== '0',
  verbose: process.env.BENCH_VERBOSE === '1',
};
/** p99 under handovers may be at most this many times the steady state's. */
const P99_FACTOR = 1.5;

const t0 = Date.now();
/** Aborted on SIGINT/SIGTERM: stops a running wrk. */
const interrupted = new AbortController();
/** Other work on the machine skews every latency here; say so in the report. */
const loadBefore = os.loadavg()[0]!;
function progress(text: string): void {
  process.stderr.write(`[${((Date.now() - t0) / 1000).toFixed(0).padStart(4)} s] ${text}\n`);
}

interface Row {
  contestant: string;
  mode: Mode;
  client: 'wrk' | 'node';
  seconds: number;
  cycles: CycleStats | undefined;
  requests: string;
  rps: number;
  non2xx: number;
  errors: Record<string, number>;
  latency: { p50: number; p99: number; max: number };
}

function wrkRow(
  contestant: string,
  mode: Mode,
  wrk: WrkResult,
  cycles: CycleStats | undefined,
): Row {
  return {
    contestant,
    mode,
    client: 'wrk',
    seconds: wrk.seconds,
    cycles,
    requests: fmtInt(wrk.requests),
    rps: wrk.requests / wrk.seconds,
    non2xx: wrk.non2xx,
    errors: wrk.errors,
    latency: wrk.latencyMs,
  };
}

function nodeRow(contestant: string, mode: Mode, load: LoadResult, cycles: CycleStats): Row {
  return {
    contestant,
    mode,
    client: 'node',
    seconds: load.seconds,
    cycles,
    requests: `${fmtInt(load.answered)}/${fmtInt(load.sent)}`,
    rps: load.answered / load.seconds,
    non2xx: load.non2xx,
    errors: load.errors,
    latency: latencySummary(load.latenciesMs),
  };
}

/** wrk for `seconds` against the contestant, cycling it once a period when `cycling`. */
async function wrkPhase(
  target: Contestant,
  mode: Mode,
  seconds: number,
  cycling: boolean,
): Promise<{ wrk: WrkResult; cycles: CycleStats | undefined }> {
  const ticker = cycling
    ? everyPeriod(() => target.cycle(), {
        periodMs: settings.periodMs,
        maxRuns: cyclesIn(seconds),
      })
    : undefined;
  let wrk: WrkResult;
  let cycles: CycleStats | undefined;
  try {
    wrk = await runWrk({
      url: `http://127.0.0.1:${target.port}/`,
      seconds,
      threads: settings.threads,
      connections: settings.connections,
      newConnection: mode === 'new-connection',
      timeoutSeconds: settings.timeoutSeconds,
      signal: interrupted.signal,
    });
  } finally {
    cycles = await ticker?.stop();
  }
  if (settings.verbose) process.stderr.write(wrk.raw);
  return { wrk, cycles };
}

/** The Node client for `seconds`, cycling the contestant once a period. */
async function nodePhase(
  target: Contestant,
  mode: Mode,
  seconds: number,
): Promise<{ load: LoadResult; cycles: CycleStats }> {
  const load = startLoad(target.port, {
    workers: settings.nodeWorkers,
    keepAlive: mode === 'keep-alive',
    timeoutMs: settings.timeoutSeconds * 1000,
    maxRequests: 5_000_000,
  });
  const ticker = everyPeriod(() => target.cycle(), {
    periodMs: settings.periodMs,
    maxRuns: cyclesIn(seconds),
  });
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  const cycles = await ticker.stop();
  return { load: await load.stop(), cycles };
}

interface Check {
  what: string;
  ok: boolean;
  /** Reported, but does not fail the run (gunicorn's p99). */
  advisory?: boolean;
}

/** Handovers attempted in a run: one per period, none at its very start or end. */
function cyclesIn(seconds: number): number {
  return Math.floor((seconds * 1000) / settings.periodMs) - 1;
}

/**
 * Fewer completed handovers than this and the run does not show what it claims to. `paceMs`: one
 * handover per this long (the period, unless a handover itself takes longer).
 */
function minCycles(seconds: number, paceMs = settings.periodMs): number {
  return Math.max(1, Math.floor(0.9 * (Math.floor((seconds * 1000) / paceMs) - 1)));
}

/**
 * `paceByHandover`: an app whose handover takes longer than the period (gunicorn: a Python start,
 * then its own drain) is handed over back to back, so count what fits at its median handover.
 */
function cycleChecks(
  label: string,
  cycles: CycleStats | undefined,
  seconds: number,
  paceByHandover = false,
): Check[] {
  const done = cycles?.done ?? 0;
  const failed = cycles?.failed ?? 0;
  const median = cycles?.durationsMs.length ? latencySummary(cycles.durationsMs).p50 : 0;
  const slow = paceByHandover && median > settings.periodMs;
  const need = minCycles(seconds, slow ? median : settings.periodMs);
  const why = slow
    ? `: one per ${fmtMs(median)}, its median handover, longer than the ${settings.periodMs} ms period`
    : '';
  return [
    {
      what: `${label}: ${done} handovers completed (at least ${need} needed for the run to count${why})`,
      ok: done >= need,
    },
    {
      what: `${label}: ${failed} handovers failed${failed ? ` (${cycles!.errors[0]})` : ''}`,
      ok: failed === 0,
    },
  ];
}

/**
 * What a contestant under the agent must show in one mode: no failed request by either client,
 * p99 within the bar, real handovers. For gunicorn (`thirdParty`) the p99 is reported only and
 * handovers are counted at its own pace.
 */
function barChecks(
  mode: Mode,
  steady: WrkResult,
  hand: { wrk: WrkResult; cycles: CycleStats | undefined },
  batonNode: { load: LoadResult; cycles: CycleStats } | undefined,
  thirdParty = false,
): Check[] {
  const limit = P99_FACTOR * steady.latencyMs.p99;
  const checks: Check[] = [
    {
      what: `${mode}, wrk: ${total(hand.wrk.errors)} socket errors`,
      ok: total(hand.wrk.errors) === 0,
    },
    { what: `${mode}, wrk: ${hand.wrk.non2xx} non-2xx`, ok: hand.wrk.non2xx === 0 },
    {
      what: `${mode}, wrk: p99 ${fmtMs(hand.wrk.latencyMs.p99)} during handovers ≤ ${P99_FACTOR} × steady ${fmtMs(steady.latencyMs.p99)} = ${fmtMs(limit)}`,
      ok: hand.wrk.latencyMs.p99 <= limit,
      advisory: thirdParty,
    },
    ...cycleChecks(`${mode}, wrk`, hand.cycles, settings.seconds, thirdParty),
  ];
  if (batonNode) {
    const l = batonNode.load;
    checks.push(
      { what: `${mode}, Node client: ${failures(l)} failed requests`, ok: failures(l) === 0 },
      { what: `${mode}, Node client: ${l.non2xx} non-2xx`, ok: l.non2xx === 0 },
      {
        what: `${mode}, Node client: ${fmtInt(l.answered)} of ${fmtInt(l.sent)} requests answered`,
        ok: l.answered === l.sent && l.sent > 0,
      },
      {
        what: `${mode}, Node client: ${l.answeredBy.size} generations answered (${[...byRelease(l)].map(([v, x]) => `${v} ${fmtInt(x.answers)}`).join(', ')})`,
        ok: l.answeredBy.size >= 2,
      },
      ...cycleChecks(`${mode}, Node client`, batonNode.cycles, settings.nodeSeconds, thirdParty),
    );
  }
  return checks;
}

async function main(): Promise<number> {
  // Asked for, but missing: fail before anything starts, saying how to install it.
  const gunicornAt = settings.gunicorn ? gunicornVersion() : undefined;
  const tmp = await tempDir('baton-bench-');
  let baton: Awaited<ReturnType<typeof startBaton>> | undefined;
  let naive: Awaited<ReturnType<typeof startNaive>> | undefined;
  let gunicorn: Awaited<ReturnType<typeof startGunicorn>> | undefined;
  let cleaning: Promise<void> | undefined;
  const cleanup = () =>
    (cleaning ??= (async () => {
      await naive
        ?.close()
        .catch((err: unknown) => progress(`stopping the naive app: ${String(err)}`));
      await gunicorn
        ?.close()
        .catch((err: unknown) => progress(`stopping gunicorn's agent: ${String(err)}`));
      await baton?.close().catch((err: unknown) => progress(`stopping the agent: ${String(err)}`));
      await tmp.cleanup();
    })());
  const signals = cleanupOnSignal(cleanup, (signal) => {
    progress(`${signal}: cleaning up`);
    interrupted.abort();
  });

  const rows: Row[] = [];
  const checks: Check[] = [];
  const gunicornChecks: Check[] = [];
  try {
    progress(
      `wrk -t${settings.threads} -c${settings.connections}, ${settings.seconds} s under handovers every ${settings.periodMs} ms, ` +
        `${settings.steadySeconds} s steady state, ${settings.nodeSeconds} s Node-client cross-check with ${settings.nodeWorkers} workers`,
    );
    baton = await startBaton(tmp.dir);
    progress(`agent pid ${baton.agent.pid} serving the fixture on 127.0.0.1:${baton.port}`);
    for (const mode of settings.modes) {
      progress(
        `${mode}: steady state, baton, no handovers (wrk ${settings.warmupSeconds} s warm-up, then ${settings.steadySeconds} s)`,
      );
      if (settings.warmupSeconds > 0) await wrkPhase(baton, mode, settings.warmupSeconds, false);
      const steady = await wrkPhase(baton, mode, settings.steadySeconds, false);
      rows.push(wrkRow('baton, steady (ref)', mode, steady.wrk, undefined));

      progress(
        `${mode}: baton, a handover every ${settings.periodMs} ms (wrk ${settings.seconds} s)`,
      );
      const hand = await wrkPhase(baton, mode, settings.seconds, true);
      rows.push(wrkRow('baton', mode, hand.wrk, hand.cycles));

      let batonNode: Awaited<ReturnType<typeof nodePhase>> | undefined;
      if (settings.nodeSeconds > 0) {
        progress(
          `${mode}: baton, a handover every ${settings.periodMs} ms (Node client ${settings.nodeSeconds} s)`,
        );
        batonNode = await nodePhase(baton, mode, settings.nodeSeconds);
        rows.push(nodeRow('baton', mode, batonNode.load, batonNode.cycles));
      }

      progress(
        `${mode}: naive stop-then-start every ${settings.periodMs} ms (wrk ${settings.seconds} s)`,
      );
      naive = await startNaive();
      const naiveWrk = await wrkPhase(naive, mode, settings.seconds, true);
      rows.push(wrkRow('naive restart', mode, naiveWrk.wrk, naiveWrk.cycles));
      if (settings.nodeSeconds > 0) {
        progress(
          `${mode}: naive stop-then-start every ${settings.periodMs} ms (Node client ${settings.nodeSeconds} s)`,
        );
        const naiveNode = await nodePhase(naive, mode, settings.nodeSeconds);
        rows.push(nodeRow('naive restart', mode, naiveNode.load, naiveNode.cycles));
      }
      await naive.close();
      naive = undefined;

      checks.push(...barChecks(mode, steady.wrk, hand, batonNode));

      if (gunicornAt !== undefined) {
        const dir = path.join(tmp.dir, `gunicorn-${mode}`);
        await mkdir(dir);
        gunicorn = await startGunicorn(dir);
        progress(
          `${mode}: gunicorn ${gunicornAt} under agent pid ${gunicorn.agent.pid} on 127.0.0.1:${gunicorn.port}; steady state ` +
            `(wrk ${settings.warmupSeconds} s warm-up, then ${settings.steadySeconds} s)`,
        );
        if (settings.warmupSeconds > 0)
          await wrkPhase(gunicorn, mode, settings.warmupSeconds, false);
        const gSteady = await wrkPhase(gunicorn, mode, settings.steadySeconds, false);
        rows.push(wrkRow('gunicorn, steady (ref)', mode, gSteady.wrk, undefined));
        progress(
          `${mode}: gunicorn, a handover every ${settings.periodMs} ms (wrk ${settings.seconds} s)`,
        );
        const gHand = await wrkPhase(gunicorn, mode, settings.seconds, true);
        rows.push(wrkRow('gunicorn under baton', mode, gHand.wrk, gHand.cycles));
        let gNode: Awaited<ReturnType<typeof nodePhase>> | undefined;
        if (settings.nodeSeconds > 0) {
          progress(
            `${mode}: gunicorn, a handover every ${settings.periodMs} ms (Node client ${settings.nodeSeconds} s)`,
          );
          gNode = await nodePhase(gunicorn, mode, settings.nodeSeconds);
          rows.push(nodeRow('gunicorn under baton', mode, gNode.load, gNode.cycles));
        }
        await gunicorn.close();
        gunicorn = undefined;
        gunicornChecks.push(...barChecks(mode, gSteady.wrk, gHand, gNode, true));
      }
    }
  } finally {
    await cleanup();
    signals.dispose();
  }

  printReport(rows, checks, gunicornAt, gunicornChecks);
  return [...checks, ...gunicornChecks].every((c) => c.ok || c.advisory) ? 0 : 1;
}

function printReport(
  rows: Row[],
  checks: Check[],
  gunicornAt: string | undefined,
  gunicornChecks: Check[],
): void {
  const columns: Column[] = [
    { title: 'contestant', align: 'left' },
    { title: 'mode', align: 'left' },
    { title: 'client', align: 'left' },
    { title: 'secs', align: 'right' },
    { title: 'handovers', align: 'right' },
    { title: 'requests', align: 'right' },
    { title: 'req/s', align: 'right' },
    { title: 'non-2xx', align: 'right' },
    { title: 'errors by kind', align: 'left' },
    { title: 'p50', align: 'right' },
    { title: 'p99', align: 'right' },
    { title: 'max', align: 'right' },
  ];
  const cells = rows.map((r) => [
    r.contestant,
    r.mode,
    r.client,
    r.seconds.toFixed(1),
    r.cycles ? `${r.cycles.done}${r.cycles.failed ? ` (+${r.cycles.failed} failed)` : ''}` : '-',
    r.requests,
    fmtInt(Math.round(r.rps)),
    fmtInt(r.non2xx),
    fmtErrors(r.errors),
    fmtMs(r.latency.p50),
    fmtMs(r.latency.p99),
    fmtMs(r.latency.max),
  ]);
  const out: string[] = ['', formatTable(columns, cells), ''];
  out.push(
    'requests: wrk counts answers only; node shows answered/sent (a request is either answered or an error).',
    'errors: wrk socket errors: write (wrk connects without blocking, so a refused connection shows up as a write',
    `error), read (reset, or closed before the answer), connect, timeout (no answer in ${settings.timeoutSeconds} s); node: errno of each failed request.`,
    "handovers: completed deploys for baton; completed stop-then-start restarts for naive. node latency includes connect, wrk's does not.",
    `machine: ${os.cpus().length} cores; 1-minute load average before the run ${loadBefore.toFixed(2)}` +
      (loadBefore > 0.5 ? ' (the machine was busy just before: latencies may be noisy)' : ''),
    '',
  );
  for (const r of rows.filter((x) => x.cycles && x.cycles.durationsMs.length > 0)) {
    const d = latencySummary(r.cycles!.durationsMs);
    out.push(
      `${r.contestant}, ${r.mode}, ${r.client}: each handover/restart took p50 ${fmtMs(d.p50)}, max ${fmtMs(d.max)}`,
    );
  }
  out.push(
    '',
    `bar for baton (0 errors, 0 non-2xx, p99 during handovers ≤ ${P99_FACTOR}× steady state):`,
  );
  for (const c of checks) out.push(`  ${c.ok ? 'ok  ' : 'MISS'}  ${c.what}`);
  if (gunicornAt !== undefined) {
    out.push(
      '',
      `bar for gunicorn ${gunicornAt} under baton (0 errors, 0 non-2xx, handovers completed at the period or at its ` +
        'own median handover if slower; its p99 is reported against the same factor but is not part of the bar ' +
        'and does not fail the run):',
    );
    for (const c of gunicornChecks)
      out.push(
        `  ${c.ok ? 'ok  ' : c.advisory ? 'over' : 'MISS'}  ${c.what}${c.advisory ? ' (reported, not part of the bar)' : ''}`,
      );
  } else out.push('', 'gunicorn: left out (BENCH_GUNICORN=0)');
  out.push(
    '',
    checks.every((c) => c.ok) ? 'verdict: baton meets the bar' : 'verdict: baton MISSES the bar',
  );
  if (gunicornAt !== undefined)
    out.push(
      gunicornChecks.every((c) => c.ok || c.advisory)
        ? 'verdict: gunicorn under baton meets its bar (0 failed requests)'
        : 'verdict: gunicorn under baton MISSES its bar',
    );
  process.stdout.write(out.join('\n') + '\n');
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(
      `bench:handover failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
    );
    process.exitCode = 2;
  },
);
