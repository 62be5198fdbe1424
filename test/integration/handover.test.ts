import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { releases, webApp, writeConfig } from '../../support/agent-config.js';
import { type RunningAgent, startAgent } from '../../support/agent-process.js';
import { control, listenerPort } from '../../support/control.js';
import { get } from '../../support/http-get.js';
import { startLoad } from '../../support/load-client.js';
import { tempDir } from '../../support/temp-dir.js';

describe('handover under concurrent requests', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>;
  let agent: RunningAgent;
  let port: number;
  let dirs: string[];

  before(async () => {
    tmp = await tempDir();
    dirs = await releases(tmp.dir, 'v1', 'v2', 'v3');
    const config = await writeConfig(tmp.dir, {
      stateDir: './state',
      apps: [webApp({ release: dirs[0] })],
    });
    agent = await startAgent(config);
    port = listenerPort((await control(agent.socket, { method: 'status' })).result);
  });
  after(async () => {
    await agent?.stop();
    await tmp?.cleanup();
  });

  for (const keepAlive of [true, false]) {
    it(`drops nothing with ${keepAlive ? 'keep-alive connections' : 'a new connection per request'}`, async () => {
      const traffic = startLoad(port, { workers: 16, keepAlive });
      // Hand over three times while the load runs: v2, v3, and back to v1.
      for (const dir of [dirs[1]!, dirs[2]!, dirs[0]!]) {
        const { result } = await control(agent.socket, {
          method: 'deploy',
          app: 'web',
          releaseDir: dir,
        });
        assert.equal((result as { drained: string }).drained, 'exited');
      }
      const r = await traffic.stop();
      assert.deepEqual(r.errors, {}, `failed requests: ${JSON.stringify(r.errors)}`);
      assert.equal(r.non2xx, 0);
      assert.equal(r.ok, r.sent);
      assert.ok(r.sent > 100, `load too thin to mean anything: ${r.sent} requests`);
      // Both old and new versions answered during the run, and the last one serves now.
      assert.ok(
        r.bodies.has('v2') && r.bodies.has('v3'),
        `versions seen: ${[...r.bodies].join(',')}`,
      );
      assert.match((await get(port)).body, /^v1 /);
    });
  }

  it('streams every phase of a deploy, in order', async () => {
    const { events, result } = await control(agent.socket, {
      method: 'deploy',
      app: 'web',
      releaseDir: dirs[1]!,
      releaseId: 'v2-again',
    });
    const phases = events
      .filter((e) => e.type === 'phase')
      .map((e) => (e as { phase: string }).phase);
    assert.deepEqual(phases, [
      'generation-started',
      'ready',
      'switched',
      'draining',
      'drained',
      'done',
    ]);
    assert.equal((result as { releaseId: string }).releaseId, 'v2-again');
  });

  it('reloads the current release as a new generation', async () => {
    const before = (await get(port)).body.split(' ');
    const { result } = await control(agent.socket, { method: 'reload', app: 'web' });
    const after = (await get(port)).body.split(' ');
    assert.equal(after[0], before[0]);
    assert.equal(Number(after[1]), (result as { generation: number }[])[0]!.generation);
    assert.ok(Number(after[1]) > Number(before[1]));
  });

  it('keeps the previous release in status', async () => {
    const { result } = await control(agent.socket, { method: 'status' });
    const app = (
      result as { apps: { release: { id: string }; previous: { id: string }; state: string }[] }
    ).apps[0]!;
    assert.equal(app.state, 'running');
    assert.equal(app.release.id, 'v2-again');
    assert.equal(app.previous.id, 'v1');
  });
});
