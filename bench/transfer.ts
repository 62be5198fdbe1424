// `npm run bench:transfer [-- --size MiB --runs N]`: sends an artifact (1 GiB by default) over
// the real path, baton's client (ssh2) → OpenSSH's sshd on loopback → the agent's WebSocket
// channel → the agent's release store, and in the same run the raw baseline
// `ssh host 'cat > /dev/null'` (OpenSSH's client) through the same sshd. Prints MiB/s of both,
// their ratio and the agent's peak RSS; ssh2's own exec of `cat` is a diagnostic row.
// Exits 1 when baton misses a bar: upload ≥ 80% of the baseline's MiB/s (medians), peak RSS of
// a fresh agent < 150 MiB after the upload, a redeploy of the same digest sends 0 bytes.
import { rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { tempDir } from '../support/temp-dir.js';
import { startSshd, type TestSshd } from '../support/sshd.js';
import { cleanupOnSignal } from './interrupt.js';
import { machineBusySeconds } from './proc-stats.js';
import { opensshRun, ssh2Session, watchSsh2Ciphers } from './ssh-raw.js';
import { formatTable, type Column } from './table.js';
import { makeArtifact, type Artifact } from './transfer-artifact.js';
import { batonRun, type AddCleanup, type BatonRun, type Transfer } from './transfer-baton.js';

const MiB = 1024 * 1024;
const RATIO_BAR = 0.8;
const RSS_BAR_MIB = 150;
/** `exec true` runs per client, for what a remote command costs besides its transfer. */
const SETUP_RUNS = 5;
const CORES = os.cpus().length;

function options(): { mib: number; runs: number } {
  const { values } = parseArgs({
    options: { size: { type: 'string', default: '1024' }, runs: { type: 'string', default: '3' } },
  });
  const int = (flag: string, raw: string, min: number, max: number) => {
    const n = Number(raw);
    if (!Number.isInteger(n) || n < min || n > max)
      throw new Error(`${flag} ${raw}: expected an integer from ${min} to ${max}`);
    return n;
  };
  return { mib: int('--size', values.size, 1, 8192), runs: int('--runs', values.runs, 1, 9) };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};

/** Runs `fn` (which returns its ms) with the machine's busy CPU seconds counted around it. */
async function measured(fn: () => Promise<number>): Promise<Transfer> {
  const before = await machineBusySeconds();
  const ms = await fn();
  return { ms, busy: (await machineBusySeconds()) - before };
}

/** `fn` several times: the median time and busy CPU, taken off each transfer after. */
async function setupCost(fn: () => Promise<number>): Promise<Transfer> {
  const runs: Transfer[] = [];
  for (let i = 0; i < SETUP_RUNS; i++) runs.push(await measured(fn));
  return { ms: median(runs.map((r) => r.ms)), busy: median(runs.map((r) => r.busy)) };
}

const less = (t: Transfer, setup: Transfer): Transfer => ({
  ms: t.ms - setup.ms,
  busy: t.busy - setup.busy,
});

/** Cleanups run once each: when their owner is done, or all at once on a signal or an error. */
function cleanups(): { add: AddCleanup; all(): Promise<void> } {
  const pending = new Set<() => Promise<void>>();
  const once = (fn: () => Promise<void>) => async () => {
    if (pending.delete(fn)) await fn();
  };
  return {
    add(fn) {
      pending.add(fn);
      return once(fn);
    },
    async all() {
      for (const fn of [...pending].reverse()) await once(fn)();
    },
  };
}

interface Row<T extends Transfer = Transfer> {
  name: string;
  cipher: string;
  runs: T[];
}

/** Every transfer, the paths interleaved round by round so drift hits them alike. */
async function measure(
  sshd: TestSshd,
  knownHosts: string,
  artifact: Artifact,
  runs: number,
  addCleanup: AddCleanup,
) {
  const progress = (text: string) => process.stderr.write(`${text}\n`);
  const ciphers = watchSsh2Ciphers();
  try {
    const openssh = (command: string, stdin?: string, cipher?: string) =>
      opensshRun(sshd, knownHosts, command, stdin, cipher);
    const sshSetup = await setupCost(async () => (await openssh('true')).ms);
    const ssh: Row = { name: "ssh 'cat > /dev/null' (baseline)", cipher: '', runs: [] };
    const sshSame: Row = { name: '', cipher: '', runs: [] };
    const sshDisk: Row = { name: "ssh 'cat > file' (diagnostic: + disk)", cipher: '', runs: [] };
    // Beside the artifact, on the filesystem the agents' stores are on (both in the temp dir).
    const sink = path.join(path.dirname(artifact.archive), 'ssh-sink');
    const ssh2: Row = { name: "ssh2 exec 'cat > /dev/null' (diagnostic)", cipher: '', runs: [] };
    const baton: Row<BatonRun> = {
      name: 'baton: ssh2 → sshd → ws → agent store',
      cipher: '',
      runs: [],
    };
    for (let round = 1; round <= runs; round++) {
      const step = (what: string) => progress(`round ${round} of ${runs}: ${what}`);
      step('ssh2 exec cat');
      const session = await ssh2Session(sshd);
      try {
        const setup = await setupCost(() => session.exec('true'));
        const t = await measured(() => session.exec('cat > /dev/null', artifact.archive));
        ssh2.runs.push(less(t, setup));
        ssh2.cipher = session.cipher;
      } finally {
        session.close();
      }
      step('ssh cat');
      let cipher = '';
      const t = await measured(async () => {
        const r = await openssh('cat > /dev/null', artifact.archive);
        cipher = r.cipher;
        return r.ms;
      });
      ssh.runs.push(less(t, sshSetup));
      ssh.cipher = cipher;
      step('ssh cat > file');
      const disk = await measured(async () => {
        const r = await openssh(`cat > '${sink}'`, artifact.archive);
        sshDisk.cipher = r.cipher;
        return r.ms;
      });
      await rm(sink);
      sshDisk.runs.push(less(disk, sshSetup));
      // The fair comparison too, when OpenSSH would pick another cipher than ssh2.
      if (cipher !== ssh2.cipher) {
        step(`ssh -c ${ssh2.cipher} cat`);
        const same = await measured(
          async () => (await openssh('cat > /dev/null', artifact.archive, ssh2.cipher)).ms,
        );
        sshSame.runs.push(less(same, sshSetup));
        sshSame.cipher = ssh2.cipher;
        sshSame.name = `ssh -c ${ssh2.cipher} 'cat > /dev/null'`;
      }
      step('baton deploy (fresh agent)');
      const seen = ciphers.seen.length;
      baton.runs.push(await batonRun(sshd, artifact, addCleanup));
      baton.cipher = ciphers.seen.slice(seen).join(',') || '?';
    }
    return { sshSetup, ssh, sshSame, sshDisk, ssh2, baton };
  } finally {
    ciphers.stop();
  }
}

async function main(): Promise<void> {
  const { mib, runs } = options();
  const started = { at: performance.now(), load: os.loadavg()[0]! };
  const clean = cleanups();
  const signals = cleanupOnSignal(() => clean.all());
  try {
    const tmp = await tempDir('baton-bench-transfer-');
    clean.add(tmp.cleanup);
    process.stderr.write(`generating and packing ${mib} MiB of random bytes in ${tmp.dir}\n`);
    const artifact = await makeArtifact(tmp.dir, mib * MiB);
    const sshd = await startSshd();
    clean.add(() => sshd.stop());
    if (sshd.kind !== 'openssh') throw new Error('the baseline needs the real OpenSSH sshd');
    const knownHosts = path.join(tmp.dir, 'known_hosts');
    await writeFile(knownHosts, `${sshd.knownHostsLine}\n`);
    const m = await measure(sshd, knownHosts, artifact, runs, clean.add);
    report(artifact, runs, m, started);
  } finally {
    signals.dispose();
    await clean.all();
  }
}

function report(
  artifact: Artifact,
  runs: number,
  m: Awaited<ReturnType<typeof measure>>,
  started: { at: number; load: number },
): void {
  const mibps = (t: Transfer) => artifact.size / MiB / (t.ms / 1000);
  const summary = (ts: Transfer[]) => ({
    s: median(ts.map((t) => t.ms)) / 1000,
    med: median(ts.map(mibps)),
    best: Math.max(...ts.map(mibps)),
    cores: median(ts.map((t) => t.busy / (t.ms / 1000))),
  });
  const base = summary(m.ssh.runs);
  const rows = [m.ssh, m.sshSame, m.sshDisk, m.ssh2, m.baton].filter((r) => r.runs.length > 0);
  const columns: Column[] = [
    { title: 'path', align: 'left' },
    { title: 'cipher (client → server)', align: 'left' },
    { title: 'seconds', align: 'right' },
    { title: 'MiB/s', align: 'right' },
    { title: 'best MiB/s', align: 'right' },
    { title: 'vs ssh', align: 'right' },
    { title: `cores busy of ${CORES}`, align: 'right' },
  ];
  console.log(
    `\nbaton transfer bench: ${(artifact.size / MiB).toFixed(1)} MiB .tar.gz (${artifact.payload / MiB} MiB ` +
      `random + baton.yml), median of ${runs} run${runs > 1 ? 's' : ''} per path, ` +
      `Node ${process.version}, ${CORES} cores; 1-min load average ${started.load.toFixed(2)} ` +
      `before, ${os.loadavg()[0]!.toFixed(2)} after (anything else running slows every row)`,
  );
  console.log(
    formatTable(
      columns,
      rows.map((r) => {
        const s = summary(r.runs);
        return [
          r.name,
          r.cipher,
          s.s.toFixed(2),
          s.med.toFixed(1),
          s.best.toFixed(1),
          `${((s.med / base.med) * 100).toFixed(0)}%`,
          s.cores.toFixed(2),
        ];
      }),
    ),
  );
  console.log(
    `seconds: ssh, the command's wall time less ${m.sshSetup.ms.toFixed(0)} ms (median \`ssh host ` +
      `true\`: connect, login, the remote shell's start, exit); ssh2, exec to close less its ` +
      `\`exec true\`; baton, first byte sent to the agent's "received" event (hashed, stored)`,
  );

  const mb = (kib: number) => (kib / 1024).toFixed(1);
  const sec = (ms: number | undefined) => (ms === undefined ? '-' : (ms / 1000).toFixed(2));
  const detail: Column[] = [
    { title: 'baton run', align: 'right' },
    { title: 'upload s', align: 'right' },
    { title: 'all at agent s', align: 'right' },
    { title: 'CPU s client/agent', align: 'right' },
    { title: 'deploy s', align: 'right' },
    { title: 'verify s', align: 'right' },
    { title: 'unpack s', align: 'right' },
    { title: 'uploadedBytes', align: 'right' },
    { title: 'agent VmHWM MiB idle/upload/deploy', align: 'right' },
    { title: 'redeploy bytes', align: 'right' },
    { title: 'redeploy s', align: 'right' },
  ];
  console.log('');
  console.log(
    formatTable(
      detail,
      m.baton.runs.map((b, i) => [
        String(i + 1),
        sec(b.ms),
        sec(b.arrivedMs),
        `${b.clientCpu.toFixed(2)} / ${b.agentCpu.toFixed(2)}`,
        sec(b.deployMs),
        sec(b.outcome.phases.verified),
        sec(b.outcome.phases.unpacked),
        String(b.outcome.uploadedBytes),
        `${mb(b.idleKiB)} / ${mb(b.uploadKiB)} / ${mb(b.deployKiB)}`,
        `${b.redeploy.uploadedBytes} (sent ${b.redeploy.sentBytes})`,
        sec(b.redeploy.ms),
      ]),
    ),
  );

  const baton = summary(m.baton.runs);
  const ratio = baton.med / base.med;
  const peakMiB = Math.max(...m.baton.runs.map((b) => b.uploadKiB)) / 1024;
  console.log(
    `\nbaton ${baton.med.toFixed(1)} MiB/s vs ssh ${base.med.toFixed(1)} MiB/s (default cipher, ` +
      `${m.ssh.cipher}): ${(ratio * 100).toFixed(0)}%; agent peak RSS after the upload ` +
      `${peakMiB.toFixed(1)} MiB; run time ${((performance.now() - started.at) / 1000).toFixed(0)} s ` +
      `(artifact ${(artifact.ms / 1000).toFixed(1)} s)`,
  );
  const misses: string[] = [];
  if (!(ratio >= RATIO_BAR))
    misses.push(
      `throughput: baton ${baton.med.toFixed(1)} MiB/s is ${(ratio * 100).toFixed(0)}% of ssh's ` +
        `${base.med.toFixed(1)} MiB/s; bar ≥ ${RATIO_BAR * 100}%`,
    );
  if (!(peakMiB < RSS_BAR_MIB))
    misses.push(`agent peak RSS ${peakMiB.toFixed(1)} MiB after the upload; bar < ${RSS_BAR_MIB}`);
  for (const [i, b] of m.baton.runs.entries())
    if (!b.redeploy.ok || b.redeploy.uploadedBytes !== 0 || b.redeploy.sentBytes !== 0)
      misses.push(
        `redeploy ${i + 1}: ${b.redeploy.ok ? 'ok' : 'FAILED'}, uploadedBytes ` +
          `${b.redeploy.uploadedBytes}, client sent ${b.redeploy.sentBytes}; bar: 0 bytes`,
      );
  if (misses.length) {
    console.log(`\nMISSED:\n  ${misses.join('\n  ')}`);
    process.exitCode = 1;
  } else
    console.log(
      `\nbars met: baton ≥ ${RATIO_BAR * 100}% of ssh's MiB/s; agent peak RSS < ${RSS_BAR_MIB} ` +
        'MiB; a redeploy of the same digest sent 0 bytes',
    );
}

await main();
