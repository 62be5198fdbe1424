import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { clientMac, makeNonce } from '../../src/transport/auth.js';
import { PROTOCOL_VERSION } from '../../src/protocol/channel.js';
import { batonAsync, batonSync } from '../../support/baton-cli.js';
import { type ChannelAgent, startChannelAgent } from '../../support/channel-agent.js';
import { withDeadline } from '../../support/deadline.js';
import { get } from '../../support/http-get.js';
import { startLoad } from '../../support/load-client.js';
import { FIXTURES } from '../../support/paths.js';
import { outcomeOf } from '../support/cli-output.js';
import { RawClient } from '../support/raw-client.js';
import { startSshd, type TestSshd } from '../../support/sshd.js';

/**
 * A local user with no token (`nobody`, uid 65534) against the agent's channel: findings 2, 3
 * and 6 of the outside review (issue 19). Behind SSH every client comes from the host itself,
 * so whatever such a user can do to the channel, it can do to every remote deploy.
 */

const NOBODY = 65534;
const FLOODER = path.join(FIXTURES, 'channel-flooder.mjs');

interface Flooder {
  proc: ChildProcess;
  reports: Record<string, unknown>[];
  /** Resolves with the first report that `pred` accepts. */
  waitFor(pred: (r: Record<string, unknown>) => boolean, what: string): Promise<void>;
  done: Promise<void>;
  stop(): Promise<void>;
}

/** Runs the flooder fixture as nobody; every flooder is also bounded in count and time itself. */
function asNobody(args: string[]): Flooder {
  const proc = spawn(process.execPath, [FLOODER, ...args], {
    uid: NOBODY,
    gid: NOBODY,
    cwd: '/',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const reports: Record<string, unknown>[] = [];
  const waiters = new Set<() => void>();
  let buf = '';
  let stderr = '';
  proc.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    buf += chunk;
    const lines = buf.split('\n');
    buf = lines.pop() ?? '';
    for (const line of lines) if (line) reports.push(JSON.parse(line) as Record<string, unknown>);
    for (const w of [...waiters]) w();
  });
  proc.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const done = new Promise<void>((resolve) => proc.once('close', () => resolve()));
  return {
    proc,
    reports,
    waitFor: (pred, what) =>
      withDeadline(
        new Promise<void>((resolve, reject) => {
          const check = () => {
            if (reports.some(pred)) {
              waiters.delete(check);
              resolve();
            } else if (proc.exitCode !== null)
              reject(new Error(`flooder exited before ${what}: ${stderr}`));
          };
          waiters.add(check);
          proc.once('close', check);
          check();
        }),
        `${what}: ${JSON.stringify(reports.slice(-3))} ${stderr}`,
      ),
    done,
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      await withDeadline(done, `flooder ${proc.pid} to end`);
    },
  };
}

/** Open file descriptors of a process, from /proc. */
async function fdCount(pid: number): Promise<number> {
  return (await readdir(`/proc/${pid}/fd`)).length;
}

/** `--host … -i … --known-hosts …` for the test sshd, and the token. */
async function sshArgs(ch: ChannelAgent, sshd: TestSshd): Promise<string[]> {
  const knownHosts = path.join(ch.dir, 'known_hosts');
  await writeFile(knownHosts, sshd.knownHostsLine + '\n');
  return [
    '--host',
    sshd.target,
    '-i',
    sshd.clientKey.path,
    '--known-hosts',
    knownHosts,
    '--token-file',
    ch.tokenFile,
  ];
}

/** A deploy through the real OpenSSH to `to` (`--agent-socket …` or `--agent-port …`). */
async function deployThroughSsh(ch: ChannelAgent, ssh: string[], id: string, to: string[]) {
  const src = await ch.source(id);
  const res = await batonAsync(ch.deployArgs(src, id, ...ssh, ...to)).done;
  assert.equal(res.code, 0, `${res.stderr}\n${res.stdout.slice(-2000)}`);
  const outcome = outcomeOf(res.stdout);
  assert.equal(outcome.ok, true);
  assert.equal(outcome.releaseId, id);
  return res;
}

describe('finding 2: a local user flooding the channel with raw connections', () => {
  const LIMIT = 512;
  let ch: ChannelAgent;
  let sshd: TestSshd;
  const flooders: Flooder[] = [];
  before(async () => {
    sshd = await startSshd();
    // TCP on loopback, explicitly: the socket is out of nobody's reach (finding 3's test).
    // A small file limit, so that a bounded flood is enough to reach it.
    ch = await startChannelAgent({}, {}, { nofile: LIMIT });
  });
  after(async () => {
    for (const f of flooders) await f.stop();
    await ch?.cleanup();
    await sshd?.stop();
  });

  it('slow connections held by local users starve neither the agent nor its app: status, crash recovery and deploys go on', async () => {
    const baseline = await fdCount(ch.agent.pid);
    // 4 × 200 slow connections held at once is past the whole limit; each one closed is
    // opened again, 20 ms later, up to 3000 per process or 60 s.
    for (let i = 0; i < 4; i++)
      flooders.push(asNobody(['hold', String(ch.channelPort), '200', '3000', '60000']));
    for (const f of flooders)
      await f.waitFor((r) => Number(r.attempts) >= 200, 'each flooder to open its 200');
    let peak = 0;
    const sample = async () => {
      const n = await fdCount(ch.agent.pid);
      peak = Math.max(peak, n);
      return n;
    };
    await sample();

    // The control socket answers (it failed with EPIPE before).
    const status = batonSync(['agent', 'status', '--config', path.join(ch.dir, 'agent.json')]);
    assert.equal(status.status, 0, status.stderr);
    assert.match(status.stdout, new RegExp(`channel on ${ch.channelSocket}`));
    await sample();

    // A crash is restarted (it failed with EMFILE writing state.json.tmp before).
    const gen = (await ch.generation()) as unknown as { number: number; pid: number };
    process.kill(gen.pid, 'SIGKILL');
    await ch.agent.waitFor(
      (r) => r.type === 'phase' && r.phase === 'switched' && r.generation === gen.number + 1,
      'the crashed app restarted',
    );
    assert.equal((await get(ch.appPort)).status, 200);
    await sample();

    // A deploy through OpenSSH to the agent's socket, under traffic.
    const traffic = startLoad(ch.appPort, { workers: 2, keepAlive: false, maxRequests: 100_000 });
    const ssh = await sshArgs(ch, sshd);
    await deployThroughSsh(ch, ssh, 'under-flood', ['--agent-socket', ch.channelSocket]);
    const served = await traffic.stop();
    assert.deepEqual(served.errors, {}, 'no failed request');
    assert.ok(served.ok > 0);
    await sample();

    // The flood was real: connections were closed on the flooders throughout.
    const closed = flooders.reduce(
      (sum, f) => sum + Number(f.reports[f.reports.length - 1]?.closedByAgent ?? 0),
      0,
    );
    assert.ok(closed > 0, 'the agent closed flood connections');
    // Below the limit with room to spare: the channel's share (256 here) plus what it had.
    assert.ok(peak < LIMIT - 64, `agent fds peaked at ${peak} of ${LIMIT} (baseline ${baseline})`);
  });
});

describe('finding 3: a local user locking out remote deploys', () => {
  let ch: ChannelAgent;
  let sshd: TestSshd;
  const flooders: Flooder[] = [];
  before(async () => {
    sshd = await startSshd();
    ch = await startChannelAgent();
    // The temp dir is nobody's to pass through: only the socket's own mode keeps nobody out.
    await chmod(ch.dir, 0o755);
  });
  after(async () => {
    for (const f of flooders) await f.stop();
    await ch?.cleanup();
    await sshd?.stop();
  });

  it('the channel socket is root only (0600): nobody gets EACCES', async () => {
    const st = await stat(ch.channelSocket);
    assert.ok(st.isSocket());
    assert.equal(st.mode & 0o777, 0o600);
    assert.equal(st.uid, 0);
    const probe = asNobody(['unix', ch.channelSocket]);
    await probe.waitFor((r) => r.outcome !== undefined, 'the outcome');
    assert.equal(probe.reports[0]!.outcome, 'EACCES');
    await probe.done;
  });

  it('on TCP: bad logins and idle connections from a local user lock out neither the right token nor deploys through OpenSSH', async () => {
    const bad = asNobody(['bad-logins', String(ch.channelPort), '8']);
    await bad.done;
    const codes = bad.reports.map((r) => r.code);
    assert.deepEqual(codes.slice(0, 5), Array(5).fill('AUTH_FAILED'), JSON.stringify(codes));
    assert.deepEqual(codes.slice(5), Array(3).fill('AUTH_RATE_LIMITED'), JSON.stringify(codes));

    // The right token on TCP from the same address, at once: not refused for others' failures.
    const right = await RawClient.open(ch.channelPort);
    right.send({ type: 'hello', protocols: [PROTOCOL_VERSION], client: 'local-user-test' });
    const { nonce } = await right.next('challenge', 'challenge');
    const clientNonce = makeNonce();
    right.send({ type: 'auth', clientNonce, mac: clientMac(ch.token, nonce, clientNonce) });
    await right.next('welcome', 'welcome after others failed');
    right.close();

    // Past maxPendingConnections (32), reopened whenever closed, up to 2000 or 60 s.
    const idle = asNobody(['idle-ws', String(ch.channelPort), '40', '2000', '60000']);
    flooders.push(idle);
    await idle.waitFor((r) => Number(r.attempts) >= 40, 'the 40 idle sockets');

    const traffic = startLoad(ch.appPort, { workers: 2, keepAlive: false, maxRequests: 100_000 });
    const ssh = await sshArgs(ch, sshd);
    await deployThroughSsh(ch, ssh, 'via-port', ['--agent-port', String(ch.channelPort)]);
    await deployThroughSsh(ch, ssh, 'via-socket', ['--agent-socket', ch.channelSocket]);
    const served = await traffic.stop();
    assert.deepEqual(served.errors, {}, 'no failed request');
    assert.ok(served.ok > 0);
    assert.ok(
      Number(idle.reports[idle.reports.length - 1]?.closedByAgent) > 0,
      'idle sockets were closed to make room',
    );
  });

  it('socketGroup: the socket is root:group 0660 and a member of the group may open it', async () => {
    const grouped = await startChannelAgent({ socketGroup: 'nogroup', port: undefined });
    try {
      await chmod(grouped.dir, 0o755);
      const st = await stat(grouped.channelSocket);
      assert.equal(st.mode & 0o777, 0o660);
      assert.equal(st.gid, NOBODY);
      const probe = asNobody(['unix', grouped.channelSocket]);
      await probe.waitFor((r) => r.outcome !== undefined, 'the outcome');
      assert.equal(probe.reports[0]!.outcome, 'connected');
      await probe.done;
    } finally {
      await grouped.cleanup();
    }
  });

  it('a socket that is not there: CHANNEL_SOCKET_UNREACHABLE through SSH and directly, saying what to check', async () => {
    const ssh = await sshArgs(ch, sshd);
    const missing = path.join(ch.dir, 'no-such.sock');
    // In the background: ssh2's fallback server, where sshd is missing, runs in this process.
    const viaSsh = await batonAsync(['status', ...ssh, '--agent-socket', missing]).done;
    assert.notEqual(viaSsh.code, 0);
    assert.match(viaSsh.stderr, /CHANNEL_SOCKET_UNREACHABLE/, viaSsh.stderr);
    assert.match(viaSsh.stderr, /socketGroup/);
    const direct = batonSync([
      'status',
      '--agent',
      `unix:${missing}`,
      '--token-file',
      ch.tokenFile,
    ]);
    assert.notEqual(direct.status, 0);
    assert.match(direct.stderr, /CHANNEL_SOCKET_UNREACHABLE/, direct.stderr);
    // And the socket itself, directly, as root: the default way on the host.
    const ok = batonSync([
      'status',
      '--agent',
      `unix:${ch.channelSocket}`,
      '--token-file',
      ch.tokenFile,
    ]);
    assert.equal(ok.status, 0, ok.stderr);
  });
});

describe('finding 6: refusals do not grow the audit log without bound', () => {
  let ch: ChannelAgent;
  before(async () => {
    ch = await startChannelAgent({ auditMaxBytes: 4096 });
  });
  after(async () => {
    await ch?.cleanup();
  });

  /** One wrong login from `from`; returns the error code the agent answered with. */
  async function wrongLogin(from: string): Promise<string> {
    const c = await RawClient.open(ch.channelPort, from);
    c.send({ type: 'hello', protocols: [PROTOCOL_VERSION], client: 'audit-flood' });
    const { nonce } = await c.next('challenge', 'challenge');
    c.send({ type: 'auth', clientNonce: makeNonce(), mac: clientMac('x'.repeat(43), nonce, 'n') });
    const err = await c.next('error', 'the refusal');
    await c.waitClosed('the refused connection to close');
    return err.code;
  }

  it('1000 wrong logins: 5 lines and one refusals-summary with the rest counted; many peers: rotated to audit.log.1 past auditMaxBytes', async () => {
    const FLOOD = 1000;
    const lanes = 5;
    const codes: string[] = [];
    await Promise.all(
      Array.from({ length: lanes }, async () => {
        for (let i = 0; i < FLOOD / lanes; i++) codes.push(await wrongLogin('127.0.0.1'));
      }),
    );
    assert.equal(codes.length, FLOOD);
    // 60 peers, one refusal each: some 5 KiB of lines, past auditMaxBytes (4 KiB) once.
    for (let i = 2; i < 62; i++) await wrongLogin(`127.0.0.${i}`);
    const auditFile = path.join(ch.stateDir, 'audit.log');
    // Stopping the agent writes the open window's summary.
    await ch.agent.stop();
    const lines = async (file: string) =>
      (await readFile(file, 'utf8').catch(() => ''))
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as { event: string; peer: string; count?: number });
    const rotated = await lines(`${auditFile}.1`);
    const current = await lines(auditFile);
    assert.ok(rotated.length > 0, 'audit.log was rotated to audit.log.1');
    for (const file of [auditFile, `${auditFile}.1`])
      assert.ok((await stat(file)).size <= 4096, `${file} within auditMaxBytes`);
    const all = [...rotated, ...current];
    const flood = all.filter((l) => l.peer === '127.0.0.1');
    const single = flood.filter((l) => l.event !== 'refusals-summary');
    const summaries = flood.filter((l) => l.event === 'refusals-summary');
    assert.equal(single.length, 5, JSON.stringify(single));
    assert.equal(summaries.length, 1, JSON.stringify(summaries));
    // Every refusal is accounted for: 5 one by one, the rest in the summary's count.
    assert.equal(single.length + summaries[0]!.count!, FLOOD);
    for (let i = 2; i < 62; i++)
      assert.ok(
        all.some((l) => l.peer === `127.0.0.${i}` && l.event === 'auth-failed'),
        `127.0.0.${i} logged`,
      );
    const mode = (await stat(auditFile)).mode & 0o777;
    assert.equal(mode, 0o600);
  });
});
