import assert from 'node:assert/strict';
import { chmod, readFile, symlink, unlink, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { AgentStatus } from '../../src/protocol/results.js';
import { isAlive } from '../../src/supervisor/process-util.js';
import { releases, webApp, writeConfig } from '../../support/agent-config.js';
import { startAgent } from '../../support/agent-process.js';
import { batonAsync, batonSync } from '../../support/baton-cli.js';
import { type ChannelAgent, startChannelAgent } from '../../support/channel-agent.js';
import { appStatus, control } from '../../support/control.js';
import { withDeadline } from '../../support/deadline.js';
import { get } from '../../support/http-get.js';
import { tempDir } from '../../support/temp-dir.js';
import { readAudit } from '../support/audit-log.js';
import { errorCodeOf, outcomeOf } from '../support/cli-output.js';
import { gatedHook } from '../support/gates.js';
import { BY_MODE } from '../support/mode-release.js';
import { waitGone } from '../support/processes.js';

type Rec = Record<string, unknown>;

/** The serving generation and restart count of `web`: unchanged means not touched. */
async function serving(
  ch: ChannelAgent,
): Promise<{ number: number; pid: number; restarts: number }> {
  const app = await appStatus(ch.agent.socket);
  return { number: app.generation!.number, pid: app.generation!.pid, restarts: app.restarts };
}

/** Phases logged from record `from` on that mean the app was stopped, restarted or replaced. */
function disturbances(ch: ChannelAgent, from: number): string[] {
  return ch.agent.events
    .slice(from)
    .filter((e) => e.type === 'phase')
    .map((e) => (e as { phase: string }).phase)
    .filter((p) =>
      ['draining', 'crashed', 'restarting', 'generation-started', 'stopped'].includes(p),
    );
}

describe('agent upgrade with a channel', () => {
  it('a new agent whose token file is now readable by others fails before it adopts anything: the app serves on, untouched, and the old agent carries on', async () => {
    const ch = await startChannelAgent();
    const config = path.join(ch.dir, 'agent.json');
    let successor: number | undefined;
    try {
      const before = await serving(ch);
      const body = (await get(ch.appPort)).body;
      const eventsBefore = ch.agent.events.length;
      await chmod(ch.tokenFile, 0o644);

      const r = batonSync(['agent', 'upgrade', '--config', config]);
      assert.notEqual(r.status, 0);
      assert.equal(errorCodeOf(r.stderr), 'CONTROL_FAILED', r.stderr);
      // The new agent's own reason is quoted, not only "see the log".
      assert.match(r.stderr, /\| .*TOKEN_INVALID/, r.stderr);

      assert.deepEqual(await serving(ch), before, 'same generation, same pid, no restart');
      assert.ok(isAlive(before.pid), 'the app process lives on');
      const now = await get(ch.appPort);
      assert.equal(now.status, 200);
      assert.equal(now.body, body);
      assert.deepEqual(disturbances(ch, eventsBefore), []);
      assert.equal(
        (await readFile(path.join(ch.stateDir, 'agent.pid'), 'utf8')).trim(),
        String(ch.agent.pid),
        'the PID file names the agent that carries on',
      );
      // Its channel listens again, and takes deploys again.
      const again = batonSync(['status', ...ch.direct, '--json']);
      assert.equal(again.status, 0, again.stderr);
      const src = await ch.source('after-failed-upgrade');
      const deployed = await batonAsync(ch.deployArgs(src, 'after-failed-upgrade', ...ch.direct))
        .done;
      assert.equal(deployed.code, 0, deployed.stderr);

      // Fixed, the upgrade goes through, and the new agent's channel takes deploys.
      await chmod(ch.tokenFile, 0o600);
      const gen = await serving(ch);
      const ok = batonSync(['agent', 'upgrade', '--config', config]);
      assert.equal(ok.status, 0, ok.stderr);
      assert.equal(await withDeadline(ch.agent.exited, 'old agent exit'), 0);
      const status = (await control(ch.agent.socket, { method: 'status' })).result as AgentStatus;
      successor = status.pid;
      assert.notEqual(successor, ch.agent.pid);
      assert.equal(status.apps[0]!.generation!.pid, gen.pid, 'adopted, not restarted');
      const src2 = await ch.source('after-upgrade');
      const viaNew = [
        '--agent',
        `ws://127.0.0.1:${status.channelPort}`,
        '--token-file',
        ch.tokenFile,
      ];
      const res = await batonAsync(ch.deployArgs(src2, 'after-upgrade', ...viaNew)).done;
      assert.equal(res.code, 0, res.stderr);
      assert.equal(outcomeOf(res.stdout).releaseId, 'after-upgrade');
    } finally {
      if (successor !== undefined && isAlive(successor)) {
        process.kill(successor, 'SIGTERM');
        await waitGone(successor);
      }
      await ch.cleanup();
    }
  });

  it('a new agent that cannot bind the channel port exits without stopping the apps it would have adopted', async () => {
    const ch = await startChannelAgent();
    const config = path.join(ch.dir, 'agent.json');
    // The port the new agent will be told to use, held by someone else.
    const squatter = net.createServer();
    await new Promise<void>((resolve) => squatter.listen(0, '127.0.0.1', resolve));
    try {
      const taken = (squatter.address() as net.AddressInfo).port;
      const cfg = JSON.parse(await readFile(config, 'utf8')) as { channel: { port: number } };
      cfg.channel.port = taken;
      await writeFile(config, JSON.stringify(cfg, null, 2));
      const before = await serving(ch);
      const eventsBefore = ch.agent.events.length;

      const r = batonSync(['agent', 'upgrade', '--config', config]);
      assert.notEqual(r.status, 0);
      assert.equal(errorCodeOf(r.stderr), 'CONTROL_FAILED', r.stderr);
      assert.match(r.stderr, /\| .*LISTENER_BIND_FAILED/, r.stderr);
      assert.deepEqual(await serving(ch), before);
      assert.ok(isAlive(before.pid), 'the app process lives on');
      assert.equal((await get(ch.appPort)).status, 200);
      assert.deepEqual(disturbances(ch, eventsBefore), []);
      const again = batonSync(['status', ...ch.direct]);
      assert.equal(again.status, 0, again.stderr);
    } finally {
      await new Promise((resolve) => squatter.close(resolve));
      await ch.cleanup();
    }
  });
});

describe('an agent started with bad channel files', () => {
  for (const [what, code] of [
    ['a token file others can read', 'TOKEN_INVALID'],
    ['a TLS key that is no key', 'CHANNEL_CONFIG_INVALID'],
  ] as const)
    it(`${what}: fails with ${code} before any app starts`, async () => {
      const tmp = await tempDir();
      try {
        const tokenFile = path.join(tmp.dir, 'token');
        const t = batonSync(['agent', 'token', '--out', tokenFile]);
        assert.equal(t.status, 0, t.stderr);
        const socket = path.join(tmp.dir, 'channel.sock');
        const channel: Record<string, unknown> = { socket, port: 0, tokenFile };
        if (code === 'TOKEN_INVALID') await chmod(tokenFile, 0o644);
        else {
          const [cert, key] = [path.join(tmp.dir, 'agent.crt'), path.join(tmp.dir, 'agent.key')];
          await writeFile(cert, 'not a certificate\n');
          await writeFile(key, 'not a key\n', { mode: 0o600 });
          channel.tls = { cert, key };
        }
        const [r0] = await releases(tmp.dir, 'r0');
        const agent = await startAgent(
          await writeConfig(tmp.dir, {
            stateDir: './state',
            apps: [webApp({ release: r0 })],
            channel,
          }),
          { expectFailure: true },
        );
        assert.equal(await withDeadline(agent.exited, 'agent exit'), 1);
        assert.match(agent.output.join('\n'), new RegExp(code));
        assert.deepEqual(
          agent.events.filter((e) => e.type === 'phase').map((e) => (e as { phase: string }).phase),
          [],
          'no app was started (nor stopped)',
        );
      } finally {
        await tmp.cleanup();
      }
    });
});

describe('a remote deploy to an app whose release crash-loops', () => {
  it('goes before the restart loop, like a local one: the fix deploys and serves', async () => {
    const ch = await startChannelAgent(
      {},
      { command: BY_MODE, restart: { initialBackoffMs: 3000, maxBackoffMs: 60_000 } },
    );
    try {
      // From now on r0 cannot start: every crash restart fails.
      await writeFile(path.join(ch.dir, 'releases', 'r0', 'mode'), 'exits-at-start\n');
      await get(ch.appPort, '/crash');
      await ch.agent.waitFor(
        (r: Rec) => r.phase === 'failed' && r.releaseId === 'r0',
        'a failed restart',
      );
      await ch.agent.waitFor(
        (r: Rec) => r.phase === 'restarting' && r.detail === 'in 6000 ms',
        'the next backoff',
      );
      const src = await ch.source('fix');
      const res = await batonAsync(ch.deployArgs(src, 'fix', ...ch.direct)).done;
      assert.equal(res.code, 0, res.stderr);
      const outcome = outcomeOf(res.stdout);
      assert.equal(outcome.ok, true);
      assert.equal(outcome.releaseId, 'fix');
      assert.match((await get(ch.appPort)).body, /^fix /);
      assert.equal((await appStatus(ch.agent.socket)).state, 'running');
    } finally {
      await ch.cleanup();
    }
  });
});

describe('remote deploys that meet a busy app or a failing prune', () => {
  let ch: ChannelAgent;
  before(async () => {
    ch = await startChannelAgent();
  });
  after(async () => {
    await ch?.cleanup();
  });

  it('refused because a local deploy held the app, the same deploy id runs again once it is free', async () => {
    const gate = gatedHook(ch.dir, 'local-gate');
    const local = control(ch.agent.socket, {
      method: 'deploy',
      app: 'web',
      releaseDir: await ch.source('local1', { hook: gate.hook }),
    });
    await ch.agent.waitFor(
      (r: Rec) => r.phase === 'hook-started' && r.releaseId === 'local1',
      'the local deploy holds the app',
    );
    const src = await ch.source('remote1');
    const args = ch.deployArgs(src, 'remote1', '--deploy-id', 'busy-then-free', ...ch.direct);
    const refused = await batonAsync(args).done;
    assert.notEqual(refused.code, 0);
    assert.equal(outcomeOf(refused.stdout).error?.code, 'DEPLOY_BUSY');
    await gate.open();
    await local;

    const retried = await batonAsync(args).done;
    assert.equal(retried.code, 0, retried.stderr);
    const outcome = outcomeOf(retried.stdout);
    assert.equal(outcome.ok, true);
    assert.equal(outcome.releaseId, 'remote1');
    assert.match((await get(ch.appPort)).body, /^remote1 /);
    const finished = (await readAudit(ch)).filter(
      (a) => a.deployId === 'busy-then-free' && a.event === 'deploy-finished',
    );
    assert.deepEqual(
      finished.map((a) => [a.ok, a.code]),
      [
        [false, 'DEPLOY_BUSY'],
        [true, undefined],
      ],
    );
  });

  it('a prune that fails after the switch does not make a failed deploy: the new release serves', async () => {
    // An entry the prune cannot stat: a dangling link among the stored archives.
    const dangling = path.join(ch.stateDir, 'apps', 'web', 'artifacts', 'gone.tar.gz');
    await symlink(path.join(ch.dir, 'nowhere'), dangling);
    try {
      const src = await ch.source('pruned1');
      const res = await batonAsync(ch.deployArgs(src, 'pruned1', ...ch.direct)).done;
      assert.equal(res.code, 0, res.stderr);
      const outcome = outcomeOf(res.stdout);
      assert.equal(outcome.ok, true);
      assert.equal(outcome.releaseId, 'pruned1');
      assert.match((await get(ch.appPort)).body, /^pruned1 /);
      await ch.agent.waitFor(
        (r: Rec) =>
          r.type === 'log' && r.source === 'store' && /removing old releases/.test(String(r.line)),
        'the failed prune reported',
      );
    } finally {
      await unlink(dangling);
    }
  });
});
