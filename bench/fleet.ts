// npm run bench:fleet: one deploy of the same 5 MiB artifact to 1, 10 and 50 agents on loopback,
// by the bundled action (dist/action.mjs) run as the runner runs it, through a real OpenSSH
// server. Prints the wall time (stage and switch apart), the action process's CPU per host and
// its peak RSS; exits non-zero when a bar that is the controller's own is missed.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { batonSync } from '../support/baton-cli.js';
import {
  startChannelAgent,
  writeReleaseSource,
  type ChannelAgent,
} from '../support/channel-agent.js';
import { ROOT, RUNNER_NODE } from '../support/paths.js';
import { startSshd } from '../support/sshd.js';
import { tempDir } from '../support/temp-dir.js';
import { cpuSplit, machineBusySeconds, peakRssKiB } from './proc-stats.js';
import { formatTable } from './table.js';

const SIZES = (process.env.BATON_BENCH_FLEET_SIZES ?? '1,10,50').split(',').map(Number);
// BATON_BENCH_FLEET_MIB changes the artifact's size, to tell the per-host cost of the bytes from the rest.
const ARTIFACT_MIB = Number(process.env.BATON_BENCH_FLEET_MIB ?? 5);
const BARS = { cpuPerHostMs: 60, peakRssMiB: 250, tenOverOne: 3 };
const ACTION = path.join(ROOT, 'dist/action.mjs');

interface Measured {
  hosts: number;
  /** Deploys measured; each figure is their median. */
  runs: number;
  wallMs: number;
  stageMs: number;
  switchMs: number;
  cpuMsPerHost: number;
  /** Of it, the kernel's part (system calls: sockets, files). */
  systemMsPerHost: number;
  peakRssMiB: number;
  /** How busy the whole machine was meanwhile (all its cores: the agents, apps and sshd too). */
  machineBusy: number;
}

// Medians of 3 deploys for the small fleets, where one run's noise (the other processes on two
// cores) is the size of what is measured; one deploy of 50 (starting 50 agents takes a minute).
const RUNS = Number(process.env.BATON_BENCH_FLEET_RUNS ?? 3);
const runsFor = (hosts: number) => (hosts <= 10 ? RUNS : 1);

function median(samples: Measured[]): Measured {
  const mid = <K extends keyof Measured>(key: K) => {
    const sorted = samples.map((m) => m[key]).sort((a, b) => a - b);
    return sorted[Math.floor(sorted.length / 2)]!;
  };
  return {
    hosts: samples[0]!.hosts,
    runs: samples.length,
    wallMs: mid('wallMs'),
    stageMs: mid('stageMs'),
    switchMs: mid('switchMs'),
    cpuMsPerHost: mid('cpuMsPerHost'),
    systemMsPerHost: mid('systemMsPerHost'),
    peakRssMiB: mid('peakRssMiB'),
    machineBusy: mid('machineBusy'),
  };
}

/** Runs the action once, sampling its CPU and peak RSS from /proc until it exits. */
async function runAction(env: NodeJS.ProcessEnv): Promise<{
  code: number | null;
  stdout: string;
  marks: Map<string, number>;
  cpu: { user: number; system: number };
  rssKiB: number;
  wallMs: number;
  machineBusy: number;
}> {
  const started = performance.now();
  const busyBefore = await machineBusySeconds();
  // BATON_BENCH_CPU_PROF=DIR writes a V8 CPU profile of the action there, to see where it goes.
  const prof = process.env.BATON_BENCH_CPU_PROF;
  // The Node a runner runs the action with (node24), when installed.
  const child = spawn(
    RUNNER_NODE,
    [...(prof ? ['--cpu-prof', `--cpu-prof-dir=${prof}`] : []), ACTION],
    { env, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const marks = new Map<string, number>();
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    stdout += d;
    for (const m of d.matchAll(/^── (preflight|stage|switch):/gm))
      if (!marks.has(m[1]!)) marks.set(m[1]!, performance.now() - started);
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  let cpu = { user: 0, system: 0 };
  let rssKiB = 0;
  const sample = async () => {
    try {
      cpu = await cpuSplit(child.pid!);
      rssKiB = await peakRssKiB(child.pid!);
    } catch {
      // Gone between two samples: the last ones stand.
    }
  };
  const timer = setInterval(() => void sample(), 20);
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  clearInterval(timer);
  if (code !== 0) process.stderr.write(stdout + stderr);
  const wallMs = performance.now() - started;
  const busy = (await machineBusySeconds()) - busyBefore;
  const machineBusy = busy / ((wallMs / 1000) * availableParallelism());
  return { code, stdout, marks, cpu, rssKiB, wallMs, machineBusy };
}

async function main(): Promise<void> {
  const sshd = await startSshd();
  const work = await tempDir('baton-bench-fleet-');
  const agents: ChannelAgent[] = [];
  const results: Measured[] = [];
  const keys = path.join(work.dir, 'keys');
  const tokenFile = path.join(work.dir, 'token');
  let archive = '';
  let token = '';
  try {
    // keys, tokenFile, archive and token are set here, for deployOnce below.
    for (const args of [
      ['keygen', '--out', keys],
      ['agent', 'token', '--out', tokenFile],
    ]) {
      const r = batonSync(args);
      if (r.status !== 0) throw new Error(r.stderr);
    }
    // The artifact: 5 MiB that do not compress, and the fixture app.
    const src = await writeReleaseSource(work.dir, 'src', {
      files: { 'blob.bin': randomBytes(ARTIFACT_MIB * 1024 * 1024) },
    });
    const out = path.join(work.dir, 'packed');
    const p = batonSync([
      'pack',
      src,
      '--app',
      'web',
      '--key',
      path.join(keys, 'baton.key'),
      '--release-id',
      'bench',
      '--out',
      out,
    ]);
    if (p.status !== 0) throw new Error(p.stderr);
    archive = path.join(
      out,
      (await readdir(out)).find((f) => f.endsWith('.tar.gz'))!,
    );
    token = (await readFile(tokenFile, 'utf8')).trim();

    for (const n of SIZES) {
      const samples: Measured[] = [];
      for (let run = 0; run < runsFor(n); run++) samples.push(await deployOnce(n));
      results.push(median(samples));
    }
  } finally {
    for (const a of agents) await a.cleanup();
    await sshd.stop();
    await work.cleanup();
  }

  /** One deploy to `n` fresh agents (none holds the artifact yet), measured. */
  async function deployOnce(n: number): Promise<Measured> {
    process.stderr.write(`starting ${n} agents…\n`);
    while (agents.length < n)
      agents.push(
        await startChannelAgent({ port: undefined }, { keepReleases: 2 }, {}, { keys, tokenFile }),
      );
    const hosts = agents.slice(0, n).map((a) => `${sshd.target} agent-socket=${a.channelSocket}`);
    const dir = await tempDir('baton-bench-run-');
    // The runner creates these before a step runs; @actions/core writes to them.
    for (const f of ['out', 'summary']) await writeFile(path.join(dir.dir, f), '');
    const r = await runAction({
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? dir.dir,
      GITHUB_OUTPUT: path.join(dir.dir, 'out'),
      GITHUB_STEP_SUMMARY: path.join(dir.dir, 'summary'),
      GITHUB_RUN_ID: `${Date.now()}`,
      INPUT_HOSTS: hosts.join('\n'),
      'INPUT_SSH-KEY': sshd.clientKey.privateKey,
      'INPUT_KNOWN-HOSTS': sshd.knownHostsLine,
      'INPUT_AGENT-TOKEN': token,
      'INPUT_AGENT-SOCKET': '/run/baton/channel.sock',
      INPUT_APP: 'web',
      INPUT_ARTIFACT: archive,
      INPUT_ROLLBACK: 'false',
      INPUT_STRATEGY: 'parallel',
      'INPUT_BATCH-SIZE': '1',
      'INPUT_MAX-PARALLEL': String(n),
      'INPUT_ON-FAILURE': 'stop',
      'INPUT_BUSY-TIMEOUT': '0',
      INPUT_TIMEOUT: '600',
      'INPUT_DRY-RUN': 'false',
      'INPUT_CONNECT-TIMEOUT': '60',
    });
    await dir.cleanup();
    if (r.code !== 0) throw new Error(`the deploy to ${n} hosts failed (exit ${r.code})`);
    for (const a of agents.slice(0, n)) {
      const g = await a.generation();
      if (g.releaseId !== 'bench') throw new Error(`an agent runs ${g.releaseId}, not bench`);
    }
    const stage = r.marks.get('stage') ?? 0;
    const sw = r.marks.get('switch') ?? r.wallMs;
    const measured: Measured = {
      hosts: n,
      runs: 1,
      wallMs: r.wallMs,
      stageMs: sw - stage,
      switchMs: r.wallMs - sw,
      cpuMsPerHost: ((r.cpu.user + r.cpu.system) * 1000) / n,
      systemMsPerHost: (r.cpu.system * 1000) / n,
      peakRssMiB: r.rssKiB / 1024,
      machineBusy: r.machineBusy,
    };
    for (const a of agents.splice(0)) await a.cleanup();
    return measured;
  }

  const one = results.find((r) => r.hosts === 1);
  const ten = results.find((r) => r.hosts === 10);
  const fifty = results.find((r) => r.hosts === 50);
  console.log(
    `\nbench:fleet: one deploy of a ${ARTIFACT_MIB} MiB artifact by dist/action.mjs through OpenSSH on loopback, strategy parallel, max-parallel = hosts; each figure the median of the runs\n`,
  );
  console.log(
    formatTable(
      [
        { title: 'hosts', align: 'right' },
        { title: 'runs', align: 'right' },
        { title: 'wall', align: 'right' },
        { title: 'stage', align: 'right' },
        { title: 'switch', align: 'right' },
        { title: 'action CPU/host', align: 'right' },
        { title: 'of it kernel', align: 'right' },
        { title: 'action peak RSS', align: 'right' },
        { title: 'machine busy', align: 'right' },
      ],
      results.map((r) => [
        String(r.hosts),
        String(r.runs),
        `${(r.wallMs / 1000).toFixed(2)} s`,
        `${(r.stageMs / 1000).toFixed(2)} s`,
        `${(r.switchMs / 1000).toFixed(2)} s`,
        `${r.cpuMsPerHost.toFixed(1)} ms`,
        `${r.systemMsPerHost.toFixed(1)} ms`,
        `${r.peakRssMiB.toFixed(0)} MiB`,
        `${(r.machineBusy * 100).toFixed(0)} %`,
      ]),
    ),
  );
  const missed: string[] = [];
  if (fifty && fifty.cpuMsPerHost > BARS.cpuPerHostMs)
    missed.push(
      `CPU per host at 50 hosts ${fifty.cpuMsPerHost.toFixed(1)} ms > ${BARS.cpuPerHostMs} ms`,
    );
  if (fifty && fifty.peakRssMiB > BARS.peakRssMiB)
    missed.push(`peak RSS at 50 hosts ${fifty.peakRssMiB.toFixed(0)} MiB > ${BARS.peakRssMiB} MiB`);
  if (one && ten && ten.wallMs > BARS.tenOverOne * one.wallMs)
    missed.push(
      `10 hosts took ${(ten.wallMs / one.wallMs).toFixed(2)}× one host's wall time > ${BARS.tenOverOne}×`,
    );
  console.log(
    `\nbars: CPU/host at 50 ≤ ${BARS.cpuPerHostMs} ms, peak RSS at 50 ≤ ${BARS.peakRssMiB} MiB, 10 hosts ≤ ${BARS.tenOverOne}× one host's wall time` +
      (one && ten ? ` (measured ${(ten.wallMs / one.wallMs).toFixed(2)}×)` : ''),
  );
  if (missed.length > 0) {
    console.log(`MISSED: ${missed.join('; ')}`);
    process.exitCode = 1;
  } else console.log('all bars met');
}

await main();
