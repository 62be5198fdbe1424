// `npm run demo`: an agent on loopback, a deploy and a rollback under load, zero drops.
// Starts a real `baton agent run` for the fixture app and a real OpenSSH server on loopback,
// sends traffic from 20 clients (half on keep-alive connections, half with a new connection per
// request), deploys a packed, signed v2 through SSH (ssh2 → sshd → the agent's channel) and rolls
// back to v1 the same way while it runs, streams every phase, and exits 1 if a request failed.
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { packInput } from '../src/artifact/pack.js';
import { buildManifest } from '../src/artifact/release-id.js';
import { generateKeyPair, signManifest } from '../src/artifact/sign.js';
import { formatEvent } from '../src/protocol/events.js';
import { originFromEnv } from '../src/deploy/origin.js';
import { controlRequest } from '../src/cli/control-client.js';
import { deployToHost, type HostPlan } from '../src/deploy/host-deploy.js';
import { errorMessage } from '../src/errors.js';
import { makeToken } from '../src/transport/auth.js';
import { sshDialer } from '../src/transport/dialer.js';
import { releases, webApp, writeConfig } from '../support/agent-config.js';
import { type RunningAgent, startAgent } from '../support/agent-process.js';
import { listenerPort } from '../support/control.js';
import { withDeadline } from '../support/deadline.js';
import { byRelease, failures, mergeResults, startLoad } from '../support/load-client.js';
import { tempDir } from '../support/temp-dir.js';
import { fmtErrors, fmtInt } from './table.js';
import { cleanupOnSignal } from './interrupt.js';
import { startSshd, type TestSshd } from '../support/sshd.js';

const LOAD_MS = 8_000;
const WORKERS_PER_KIND = 10;
/** When, after the load starts, each handover begins. */
const SCRIPT = [
  { atMs: 2_000, kind: 'deploy', what: 'baton deploy v2 --host (through SSH)' },
  { atMs: 5_000, kind: 'rollback', what: 'baton rollback (through SSH, no upload)' },
] as const;

const started = Date.now();
const stamp = () => `[${((Date.now() - started) / 1000).toFixed(1).padStart(4)} s]`;
const say = (text: string) => process.stdout.write(`${text}\n`);
const sleepUntil = (t: number) =>
  new Promise((resolve) => setTimeout(resolve, Math.max(0, t - Date.now())));

async function main(): Promise<number> {
  const tmp = await tempDir('baton-demo-');
  let agent: RunningAgent | undefined;
  let sshd: TestSshd | undefined;
  let ok = true;
  let cleaning: Promise<void> | undefined;
  const cleanup = () =>
    (cleaning ??= (async () => {
      if (agent) {
        say(`${stamp()} stopping the agent`);
        await agent.stop().catch((err: unknown) => say(`stopping the agent: ${errorMessage(err)}`));
      }
      await sshd?.stop().catch(() => undefined);
      await tmp.cleanup();
    })());
  const signals = cleanupOnSignal(cleanup);
  try {
    const [v1, v2] = await releases(tmp.dir, 'v1', 'v2');
    // v2 ships as CI would ship it: packed, signed, uploaded through SSH.
    await writeFile(path.join(v2!, 'VERSION'), 'v2\n');
    const keys = generateKeyPair();
    const archive = path.join(tmp.dir, 'v2.tar.gz');
    const packed = await packInput(v2!, archive);
    const signed = signManifest(
      buildManifest({
        app: 'web',
        releaseId: 'v2',
        archive: { sha256: packed.sha256, size: packed.size, entries: packed.entries },
        now: new Date(),
      }),
      keys.privateKeyPem,
    );
    const token = makeToken();
    const tokenFile = path.join(tmp.dir, 'token');
    await writeFile(tokenFile, token, { mode: 0o600 });
    sshd = await startSshd();
    say(
      sshd.kind === 'openssh'
        ? `${stamp()} OpenSSH sshd on 127.0.0.1:${sshd.port}`
        : `${stamp()} *** sshd not installed: ssh2's own server stands in (apt-get install openssh-server) ***`,
    );
    const config = await writeConfig(tmp.dir, {
      stateDir: './state',
      trustedKeys: [keys.publicKey],
      apps: [webApp({ release: v1, listeners: [{ name: 'http', tcp: '127.0.0.1:0' }] })],
      // The default: the channel on a unix socket only root may open, reached through SSH.
      channel: { socket: path.join(tmp.dir, 'channel.sock'), tokenFile },
    });
    say(`${stamp()} starting: baton agent run --config ${config}`);
    agent = await startAgent(config);
    const channel = await agent.waitFor(
      (r) => r.type === 'channel' && typeof r.socket === 'string',
      'channel',
    );
    const dialer = sshDialer(
      {
        target: sshd.target,
        privateKey: sshd.clientKey.privateKey,
        knownHosts: [sshd.knownHostsLine],
      },
      channel.socket as string,
    );
    const port = listenerPort(
      await withDeadline(controlRequest(agent.socket, { method: 'status' }), 'status'),
    );
    say(`${stamp()} agent pid ${agent.pid} holds 127.0.0.1:${port}; app "web" serves release v1`);
    say(
      `${stamp()} load: ${WORKERS_PER_KIND * 2} clients for ${LOAD_MS / 1000} s ` +
        `(${WORKERS_PER_KIND} on keep-alive connections, ${WORKERS_PER_KIND} with a new connection per request)`,
    );

    const opts = { workers: WORKERS_PER_KIND, timeoutMs: 5_000, maxRequests: 2_000_000 };
    const keepAlive = startLoad(port, { ...opts, keepAlive: true });
    const perRequest = startLoad(port, { ...opts, keepAlive: false });
    const loadStart = Date.now();
    const ticker = setInterval(() => {
      const r = [keepAlive.result, perRequest.result];
      const answered = r.reduce((n, x) => n + x.answered, 0);
      const failed = r.reduce((n, x) => n + failures(x), 0);
      say(`${stamp()} load: ${fmtInt(answered)} answered, ${fmtInt(failed)} failed so far`);
    }, 1_000);
    try {
      for (const step of SCRIPT) {
        await sleepUntil(loadStart + step.atMs);
        say(`${stamp()} ${step.what}`);
        try {
          const plan: HostPlan =
            step.kind === 'deploy'
              ? {
                  kind: 'deploy',
                  deployId: 'demo-deploy',
                  app: 'web',
                  manifest: signed,
                  archive,
                  origin: originFromEnv(process.env),
                }
              : {
                  kind: 'rollback',
                  deployId: 'demo-rollback',
                  app: 'web',
                  origin: originFromEnv(process.env),
                };
          const result = await withDeadline(
            deployToHost(dialer, token, plan, {
              event: (e) => {
                if (e.type !== 'progress') say(`${stamp()}   ${formatEvent(e).trimStart()}`);
              },
              note: (line) => say(`${stamp()}   ${line}`),
            }),
            step.what,
          );
          if (!result.ok) throw new Error(`${result.error?.code}: ${result.error?.message}`);
          say(
            `${stamp()} ${step.what}: release ${result.releaseId} serves as generation ${result.generation}, ` +
              `${fmtInt(result.uploadedBytes)} bytes uploaded, ${result.totalMs} ms in all`,
          );
          if (result.cold) ok = false;
        } catch (err) {
          say(`${stamp()} ${step.what} FAILED: ${errorMessage(err)}`);
          ok = false;
        }
      }
      await sleepUntil(loadStart + LOAD_MS);
    } finally {
      clearInterval(ticker);
      await dialer.close();
    }
    const total = mergeResults(await keepAlive.stop(), await perRequest.stop());
    const seen = byRelease(total);

    const versions = [...seen]
      .map(
        ([release, x]) =>
          `${release} ${fmtInt(x.answers)} (generation${x.generations.length > 1 ? 's' : ''} ${x.generations.join(', ')})`,
      )
      .join('; ');
    const dropped = total.sent - total.answered + total.non2xx;
    say('');
    say('summary');
    say(`  requests sent      ${fmtInt(total.sent)}`);
    say(
      `  answered           ${fmtInt(total.answered)}${total.non2xx ? ` (${fmtInt(total.non2xx)} not 2xx)` : ', all 2xx'}`,
    );
    say(`  failed             ${fmtErrors(total.errors)}`);
    say(`  answered by        ${versions}`);
    say(
      dropped === 0
        ? '  zero dropped: every request sent during the deploy and the rollback was answered'
        : `  NOT zero dropped: ${fmtInt(dropped)} request(s) failed or were not 2xx`,
    );
    if (!ok) say('  a handover did not complete cleanly: see the lines above');
    if (!seen.has('v2')) say('  v2 never answered: the deploy did not take effect');
    if (dropped > 0 || total.sent === 0 || !seen.has('v2')) ok = false;
  } catch (err) {
    ok = false;
    say(`demo failed: ${errorMessage(err)}`);
  } finally {
    await cleanup();
    signals.dispose();
  }
  return ok ? 0 : 1;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`demo failed: ${errorMessage(err)}\n`);
    process.exitCode = 1;
  },
);
