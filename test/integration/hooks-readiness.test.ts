import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { releases, webApp, writeConfig } from '../../support/agent-config.js';
import { startAgent } from '../../support/agent-process.js';
import { control, controlError } from '../../support/control.js';
import { get } from '../../support/http-get.js';
import { tempDir } from '../../support/temp-dir.js';
import { withWebAgent } from '../support/web-agent.js';

describe('lifecycle hooks', () => {
  it('run start, beforeRestart, afterRestart and stop in order, with release ids in their environment', async () => {
    const tmp = await tempDir();
    try {
      const [v1, v2] = await releases(tmp.dir, 'v1', 'v2');
      const trail = path.join(tmp.dir, 'trail');
      const record = (name: string) =>
        `echo "${name} $BATON_RELEASE_ID prev=$BATON_PREVIOUS_RELEASE_ID cwd=$(basename "$PWD")" >> ${trail}`;
      const config = await writeConfig(tmp.dir, {
        stateDir: './state',
        apps: [
          webApp({
            release: v1,
            hooks: {
              start: record('start'),
              beforeRestart: record('beforeRestart'),
              afterRestart: record('afterRestart'),
              stop: record('stop'),
            },
          }),
        ],
      });
      const agent = await startAgent(config);
      const { events } = await control(agent.socket, {
        method: 'deploy',
        app: 'web',
        releaseDir: v2!,
      });
      assert.equal(await agent.stop(), 0);
      const lines = (await readFile(trail, 'utf8')).trim().split('\n');
      assert.deepEqual(lines, [
        'start v1 prev= cwd=v1',
        'beforeRestart v2 prev=v1 cwd=v2',
        'afterRestart v2 prev=v1 cwd=v2',
        'stop v2 prev=v1 cwd=v2',
      ]);
      // afterRestart runs only once the old generation has drained.
      const phases = events
        .filter((e) => e.type === 'phase')
        .map((e) => `${e.phase}${'hook' in e && e.hook ? `:${e.hook}` : ''}`);
      assert.ok(
        phases.indexOf('drained') < phases.indexOf('hook-started:afterRestart'),
        phases.join(' '),
      );
    } finally {
      await tmp.cleanup();
    }
  });

  it('a hook that outlives its timeout is killed and the deploy fails with HOOK_TIMEOUT, old version serving', () =>
    withWebAgent(
      ['v1', 'v2'],
      // Long enough for two shells to start and echo on a busy machine (500 ms was not, once,
      // with two busy loops beside the suite).
      { hooks: { beforeRestart: { run: 'echo waiting; sleep 60', timeoutMs: 2000 } } },
      async ({ agent, port, dirs }) => {
        const err = await controlError(agent.socket, {
          method: 'deploy',
          app: 'web',
          releaseDir: dirs.v2!,
        });
        assert.equal(err.code, 'HOOK_TIMEOUT');
        assert.deepEqual(err.lines, ['waiting']);
        assert.match((await get(port)).body, /^v1 1 /);
      },
    ));
});

describe('readiness', () => {
  it('http: the agent checks a port private to the new generation before switching', () =>
    withWebAgent(
      ['v1', 'v2'],
      { readiness: { type: 'http', path: '/healthz', timeoutMs: 10_000 } },
      async ({ agent, port, dirs }) => {
        const { events } = await control(agent.socket, {
          method: 'deploy',
          app: 'web',
          releaseDir: dirs.v2!,
        });
        assert.ok(events.some((e) => e.type === 'phase' && e.phase === 'ready'));
        assert.match((await get(port)).body, /^v2 2 /);
      },
    ));

  it('delay: a generation alive after the delay counts as ready', () =>
    withWebAgent(
      ['v1', 'v2'],
      { readiness: { type: 'delay', ms: 300 } },
      async ({ agent, port, dirs }) => {
        await control(agent.socket, { method: 'deploy', app: 'web', releaseDir: dirs.v2! });
        assert.match((await get(port)).body, /^v2 2 /);
      },
    ));

  it('SIGHUP to the agent reloads every app', () =>
    withWebAgent(['v1'], {}, async ({ agent, port }) => {
      agent.proc.kill('SIGHUP');
      await agent.waitFor((r) => r.phase === 'done' && r.generation === 2, 'reload done');
      assert.match((await get(port)).body, /^v1 2 /);
    }));
});

describe('a hook that leaves a daemon behind', () => {
  it('still finishes: the daemon holding its output does not hold the deploy', () =>
    withWebAgent(
      ['v1', 'v2'],
      // The daemon escapes the hook's process group and keeps stdout open for longer than the harness waits for a hung test.
      { hooks: { beforeRestart: 'setsid sleep 45 & echo daemon started' } },
      async ({ agent, port, dirs }) => {
        const { events } = await control(agent.socket, {
          method: 'deploy',
          app: 'web',
          releaseDir: dirs.v2!,
        });
        assert.ok(events.some((e) => e.type === 'log' && e.line === 'daemon started'));
        assert.match((await get(port)).body, /^v2 /);
      },
    ));
});
