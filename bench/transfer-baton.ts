// baton's side of bench/transfer.ts: one deploy of the artifact to a fresh agent, through sshd,
// timed from the first byte sent to the agent's `received` event, and a redeploy of it.
import { deployToHost, type HostPlan, type HostReporter } from '../src/deploy/host-deploy.js';
import type { DeployOutcome } from '../src/protocol/channel.js';
import { sshDialer } from '../src/transport/dialer.js';
import { startChannelAgent } from '../support/channel-agent.js';
import { withDeadline } from '../support/deadline.js';
import type { TestSshd } from '../support/sshd.js';
import { cpuSeconds, machineBusySeconds, peakRssKiB } from './proc-stats.js';
import { signedManifest, type Artifact } from './transfer-artifact.js';

const MiB = 1024 * 1024;
/** Upload, verify, unpack and handover of a few GiB at a few MiB/s; only a hung one hits it. */
const DEPLOY_DEADLINE_MS = 15 * 60_000;

/** One transfer of the archive: its time, and the CPU seconds the machine spent meanwhile. */
export interface Transfer {
  ms: number;
  busy: number;
}

export interface BatonRun extends Transfer {
  /** First byte sent → every byte at the agent's connection (its last progress event). */
  arrivedMs: number;
  /** The whole deploy: connect, upload, verify, unpack, handover. */
  deployMs: number;
  outcome: DeployOutcome;
  /** CPU seconds of this process (the client) and of the agent during the upload. */
  clientCpu: number;
  agentCpu: number;
  /** The fresh agent's VmHWM before the deploy, after the upload, after the deploy (KiB). */
  idleKiB: number;
  uploadKiB: number;
  deployKiB: number;
  redeploy: { ms: number; ok: boolean; uploadedBytes: number; sentBytes: number };
}

/** Registers a cleanup to run on a signal; returns the function that runs it now, once. */
export type AddCleanup = (fn: () => Promise<void>) => () => Promise<void>;

interface Sample {
  at: number;
  client: number;
  agent: Promise<number>;
  machine: Promise<number>;
}

/**
 * Starts a fresh agent (its own process, store and signing key) that accepts an artifact this
 * big, deploys it there through `sshd` and deploys the same digest again. The agent is stopped
 * and its files removed before this returns.
 */
export async function batonRun(
  sshd: TestSshd,
  artifact: Artifact,
  addCleanup: AddCleanup,
): Promise<BatonRun> {
  const room = 2 * artifact.size + 64 * MiB;
  const ca = await startChannelAgent({}, { maxArchiveBytes: room, unpack: { maxBytes: room } });
  const stop = addCleanup(() => ca.cleanup());
  const dialer = sshDialer(
    {
      target: sshd.target,
      privateKey: sshd.clientKey.privateKey,
      knownHosts: [sshd.knownHostsLine],
    },
    ca.channelSocket,
  );
  try {
    const pid = ca.agent.pid;
    const idleKiB = await peakRssKiB(pid);
    const manifest = await signedManifest(artifact, ca.keyFile);
    const plan = (deployId: string): HostPlan => ({
      kind: 'deploy',
      deployId,
      app: 'web',
      manifest,
      archive: artifact.archive,
      origin: { actor: 'bench-transfer' },
    });
    // Taken inside the reporter's callbacks: the clock and our own CPU at once, /proc after.
    const sample = (): Sample => {
      const { user, system } = process.cpuUsage();
      return {
        at: performance.now(),
        client: (user + system) / 1e6,
        // NaN rather than an unhandled rejection if the agent died: the deploy says why.
        agent: cpuSeconds(pid).catch(() => NaN),
        machine: machineBusySeconds(),
      };
    };
    let sent: Sample | undefined;
    let received: Sample | undefined;
    let arrived: number | undefined;
    let uploadKiB: Promise<number> | undefined;
    const notes: string[] = [];
    const reporter: HostReporter = {
      sent: () => void (sent ??= sample()),
      event: (e) => {
        if (e.type === 'progress' && e.bytes === e.total) arrived ??= performance.now();
        if (e.type !== 'phase' || e.phase !== 'received' || received) return;
        received = sample();
        uploadKiB = peakRssKiB(pid).catch(() => NaN);
      },
      note: (line) => notes.push(line),
    };
    const t0 = performance.now();
    const outcome = await withDeadline(
      deployToHost(dialer, ca.token, plan('bench-upload'), reporter),
      'the deploy',
      DEPLOY_DEADLINE_MS,
    );
    const deployMs = performance.now() - t0;
    if (!outcome.ok) throw new Error(`the deploy failed: ${JSON.stringify(outcome.error)}`);
    if (!sent || !received || !uploadKiB)
      throw new Error('the deploy succeeded without a sent call and a received event');
    const deployKiB = await peakRssKiB(pid);
    let sentBytes = 0;
    const t1 = performance.now();
    const again = await withDeadline(
      deployToHost(dialer, ca.token, plan('bench-redeploy'), {
        sent: (bytes) => (sentBytes = bytes),
        event: () => undefined,
        note: (line) => notes.push(line),
      }),
      'the redeploy',
      DEPLOY_DEADLINE_MS,
    );
    const redeployMs = performance.now() - t1;
    if (notes.length) process.stderr.write(`  notes: ${notes.join('; ')}\n`);
    return {
      ms: received.at - sent.at,
      busy: (await received.machine) - (await sent.machine),
      arrivedMs: (arrived ?? NaN) - sent.at,
      deployMs,
      outcome,
      clientCpu: received.client - sent.client,
      agentCpu: (await received.agent) - (await sent.agent),
      idleKiB,
      uploadKiB: await uploadKiB,
      deployKiB,
      redeploy: {
        ms: redeployMs,
        ok: again.ok,
        uploadedBytes: again.uploadedBytes,
        sentBytes,
      },
    };
  } finally {
    await dialer.close();
    await stop();
  }
}
