import assert from 'node:assert/strict';
import { access } from 'node:fs/promises';
import path from 'node:path';
import { finished } from 'node:stream/promises';
import { after, before, describe, it } from 'node:test';
import { webApp, writeConfig } from '../../support/agent-config.js';
import { type RunningAgent, startAgent } from '../../support/agent-process.js';
import { appStatus, control, controlError, listenerPort } from '../../support/control.js';
import { withDeadline } from '../../support/deadline.js';
import { get } from '../../support/http-get.js';
import { type LoadResult, startLoad } from '../../support/load-client.js';
import { tempDir } from '../../support/temp-dir.js';
import { gate } from '../support/gates.js';
import { BY_MODE, modeRelease, startModeAgent, type ModeAgent } from '../support/mode-release.js';
import { isAlive } from '../../src/supervisor/process-util.js';

/** The pid of the generation started for `releaseId`, from the agent's log. */
async function startedPid(agent: RunningAgent, releaseId: string): Promise<number> {
  const rec = await agent.waitFor(
    (r) => r.type === 'phase' && r.phase === 'generation-started' && r.releaseId === releaseId,
    `generation of ${releaseId} started`,
  );
  return rec.pid as number;
}

function assertClean(r: LoadResult, versions: string[]): void {
  assert.deepEqual(r.errors, {}, `failed requests: ${JSON.stringify(r.errors)}`);
  assert.equal(r.non2xx, 0);
  assert.equal(r.ok, r.sent);
  assert.deepEqual(
    [...r.bodies].sort(),
    versions.sort(),
    `versions seen: ${[...r.bodies].join(',')}`,
  );
}

describe('a failed deploy leaves the old generation serving', () => {
  let tmp: ModeAgent['tmp'];
  let agent: RunningAgent;
  let port: number;

  before(async () => {
    ({ tmp, agent, port } = await startModeAgent({
      readiness: { type: 'notify', timeoutMs: 2000 },
      hooks: {
        beforeRestart: {
          run: 'test ! -e fail-hook || { echo hook says no; exit 1; }',
          timeoutMs: 20_000,
        },
      },
    }));
  });
  after(async () => {
    await agent?.stop();
    await tmp?.cleanup();
  });

  /**
   * Deploys `releaseDir` under load (keep-alive and new-connection workers) and checks that it
   * fails with `code` while v1's generation, the same process as before, answers every request.
   */
  async function failsWhileV1Serves(releaseDir: string, code: string) {
    const before = await appStatus(agent.socket);
    assert.equal(before.release?.id, 'v1');
    const traffic = [
      startLoad(port, { workers: 4, keepAlive: true }),
      startLoad(port, { workers: 4, keepAlive: false }),
    ];
    const outcome = await controlError(agent.socket, {
      method: 'deploy',
      app: 'web',
      releaseDir,
    }).then(
      (err) => ({ err }),
      (thrown: unknown) => ({ thrown }),
    );
    const results = await Promise.all(traffic.map((t) => t.stop()));
    if ('thrown' in outcome) throw outcome.thrown;
    const { err } = outcome;
    for (const r of results) assertClean(r, ['v1']);
    assert.equal(err.code, code, `${err.code}: ${err.message}`);
    assert.match((await get(port)).body, /^v1 /);
    const after = await appStatus(agent.socket);
    assert.equal(after.state, 'running');
    assert.equal(after.release?.id, 'v1');
    assert.equal(after.generation?.releaseId, 'v1');
    assert.equal(after.generation?.pid, before.generation?.pid);
    assert.equal(after.deploy, undefined);
    // The agent's own log says so too, with the same code.
    const id = path.basename(releaseDir);
    await agent.waitFor(
      (r) => r.type === 'phase' && r.phase === 'failed' && r.releaseId === id && r.code === code,
      `failed ${id}`,
    );
    return err;
  }

  it('rejects a release that exits at start with GENERATION_EXITED and its last lines', async () => {
    const dir = await modeRelease(tmp.dir, 'v-exits', 'exits-at-start');
    const err = await failsWhileV1Serves(dir, 'GENERATION_EXITED');
    assert.ok(
      err.lines.some((l) => l.includes('fatal: cannot connect')),
      `lines: ${JSON.stringify(err.lines)}`,
    );
  });

  it('rejects a release stuck before it listens with READINESS_TIMEOUT, and kills it', async () => {
    const dir = await modeRelease(tmp.dir, 'v-stuck', 'stuck-starting');
    const err = await failsWhileV1Serves(dir, 'READINESS_TIMEOUT');
    assert.ok(err.lines.includes('still warming the cache'), `lines: ${JSON.stringify(err.lines)}`);
    assert.equal(isAlive(await startedPid(agent, 'v-stuck')), false);
  });

  it('rejects a release that listens but never says READY with READINESS_TIMEOUT, and kills it', async () => {
    // No load here: this generation accepts on the shared socket until it is killed, so requests
    // it took when the deadline hit are lost. That is the app breaking the readiness contract.
    const dir = await modeRelease(tmp.dir, 'v-never', 'never-ready');
    const before = await appStatus(agent.socket);
    const err = await controlError(agent.socket, { method: 'deploy', app: 'web', releaseDir: dir });
    assert.equal(err.code, 'READINESS_TIMEOUT', err.message);
    assert.ok(
      err.lines.includes('listening, but never ready'),
      `lines: ${JSON.stringify(err.lines)}`,
    );
    assert.equal(isAlive(await startedPid(agent, 'v-never')), false);
    for (let i = 0; i < 20; i++) assert.match((await get(port)).body, /^v1 /);
    const after = await appStatus(agent.socket);
    assert.equal(after.state, 'running');
    assert.equal(after.release?.id, 'v1');
    assert.equal(after.generation?.pid, before.generation?.pid);
  });

  it('rejects a release whose beforeRestart hook fails with HOOK_FAILED, starting no generation', async () => {
    const dir = await modeRelease(tmp.dir, 'v-hook', 'serve', { 'fail-hook': '' });
    const err = await failsWhileV1Serves(dir, 'HOOK_FAILED');
    assert.ok(err.lines.includes('hook says no'), `lines: ${JSON.stringify(err.lines)}`);
    const started = agent.events.filter(
      (e) => e.type === 'phase' && e.phase === 'generation-started' && e.releaseId === 'v-hook',
    );
    assert.deepEqual(started, []);
  });

  it('rejects a release directory that does not exist with RELEASE_DIR_MISSING', async () => {
    await failsWhileV1Serves(path.join(tmp.dir, 'releases', 'v-nowhere'), 'RELEASE_DIR_MISSING');
    assert.ok(
      !agent.events.some(
        (e) => e.type === 'phase' && e.phase === 'hook-started' && e.releaseId === 'v-nowhere',
      ),
    );
  });

  // Last: the deploy it lets through replaces v1.
  it('rejects a second deploy while one is running with DEPLOY_BUSY, and the first one completes', async () => {
    const slow = await modeRelease(tmp.dir, 'v-gated', 'serve');
    const v2 = await modeRelease(tmp.dir, 'v2', 'serve');
    const held = await gate(slow);
    const traffic = [
      startLoad(port, { workers: 4, keepAlive: true }),
      startLoad(port, { workers: 4, keepAlive: false }),
    ];
    const first = control(agent.socket, { method: 'deploy', app: 'web', releaseDir: slow }).finally(
      () => held.close(),
    );
    // Awaited below; this only keeps a failure before then from also being an unhandled rejection.
    first.catch(() => undefined);
    let result: unknown;
    let results: LoadResult[];
    try {
      try {
        // The new generation is up but held before it listens: the deploy cannot finish meanwhile.
        await agent.waitFor(
          (r) => r.type === 'log' && r.line === 'waiting at the gate',
          'gated generation',
        );
        const busy = await controlError(agent.socket, {
          method: 'deploy',
          app: 'web',
          releaseDir: v2,
        });
        assert.equal(busy.code, 'DEPLOY_BUSY', busy.message);
        const during = await appStatus(agent.socket);
        assert.equal(during.state, 'deploying');
        assert.equal(during.release?.id, 'v1');
        assert.equal(during.generation?.releaseId, 'v1');
        assert.match((await get(port)).body, /^v1 /);
      } finally {
        await held.open();
      }
      ({ result } = await first);
    } finally {
      results = await Promise.all(traffic.map((t) => t.stop()));
    }
    for (const r of results) {
      assert.deepEqual(r.errors, {}, `failed requests: ${JSON.stringify(r.errors)}`);
      assert.equal(r.ok, r.sent);
      assert.ok(
        [...r.bodies].every((b) => b === 'v1' || b === 'v-gated'),
        `versions seen: ${[...r.bodies].join(',')}`,
      );
    }
    assert.equal((result as { releaseId: string }).releaseId, 'v-gated');
    assert.equal((result as { drained: string }).drained, 'exited');
    assert.ok(
      !agent.events.some(
        (e) => e.type === 'phase' && e.phase === 'generation-started' && e.releaseId === 'v2',
      ),
    );
    assert.match((await get(port)).body, /^v-gated /);
    const after = await appStatus(agent.socket);
    assert.equal(after.state, 'running');
    assert.equal(after.release?.id, 'v-gated');
    assert.equal(after.previous?.id, 'v1');
  });
});

describe('an old generation that ignores SIGTERM', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>;
  let agent: RunningAgent;

  before(async () => {
    tmp = await tempDir();
    const stubborn = await modeRelease(tmp.dir, 'v1', 'ignores-sigterm');
    const config = await writeConfig(tmp.dir, {
      stateDir: './state',
      apps: [webApp({ command: BY_MODE, release: stubborn, drain: { timeoutMs: 1000 } })],
    });
    agent = await startAgent(config);
  });
  after(async () => {
    await agent?.stop();
    await tmp?.cleanup();
  });

  it('is killed at the drain deadline and the deploy succeeds', async () => {
    const port = listenerPort((await control(agent.socket, { method: 'status' })).result);
    assert.match((await get(port)).body, /^stubborn /);
    const old = await appStatus(agent.socket);
    const oldPid = old.generation!.pid;
    const v2 = await modeRelease(tmp.dir, 'v2', 'serve');
    const { result } = await control(agent.socket, {
      method: 'deploy',
      app: 'web',
      releaseDir: v2,
    });
    const r = result as { releaseId: string; drained: string; previousReleaseId: string };
    assert.equal(r.drained, 'killed');
    assert.equal(r.releaseId, 'v2');
    assert.equal(r.previousReleaseId, 'v1');
    // It got the drain signal and chose to ignore it; then it was killed.
    await agent.waitFor(
      (rec) =>
        rec.type === 'log' &&
        rec.source === `gen-${old.generation!.number}` &&
        rec.line === 'SIGTERM ignored',
      'SIGTERM ignored',
    );
    assert.equal(isAlive(oldPid), false, `old generation pid ${oldPid} is still alive`);
    for (let i = 0; i < 10; i++) assert.match((await get(port)).body, /^v2 /);
    const now = await appStatus(agent.socket);
    assert.equal(now.state, 'running');
    assert.equal(now.release?.id, 'v2');
  });
});

describe('an app command that does not exist', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>;
  let agent: RunningAgent | undefined;

  before(async () => {
    tmp = await tempDir();
  });
  after(async () => {
    await agent?.stop();
    await tmp?.cleanup();
  });

  it('makes the agent fail to start with COMMAND_NOT_FOUND and exit code 1', async () => {
    const v1 = await modeRelease(tmp.dir, 'v1', 'serve');
    const config = await writeConfig(tmp.dir, {
      stateDir: './state',
      apps: [webApp({ command: ['definitely-not-a-command-xyz'], release: v1 })],
    });
    agent = await startAgent(config, { expectFailure: true });
    const code = await withDeadline(agent.exited, 'agent exit');
    // 'exit' may come before the last of stderr: wait for both streams to end.
    await withDeadline(
      Promise.all([finished(agent.proc.stdout!), finished(agent.proc.stderr!)]),
      'agent output',
    );
    assert.equal(code, 1);
    assert.ok(
      agent.output.some((l) => l.includes('COMMAND_NOT_FOUND')),
      `output:\n${agent.output.join('\n')}`,
    );
    // It let go of its PID file on the way out.
    await assert.rejects(access(path.join(tmp.dir, 'state', 'agent.pid')), { code: 'ENOENT' });
  });
});
