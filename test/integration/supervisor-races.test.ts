import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { webApp, writeConfig } from '../../support/agent-config.js';
import { startAgent } from '../../support/agent-process.js';
import { control, controlError, listenerPort } from '../../support/control.js';
import { get } from '../../support/http-get.js';
import { tempDir } from '../../support/temp-dir.js';
import { BY_MODE, modeRelease } from '../support/mode-release.js';

type Rec = Record<string, unknown>;

describe('supervisor races found in review', () => {
  for (const readiness of [
    { type: 'notify', timeoutMs: 5000 },
    { type: 'delay', ms: 500 },
  ]) {
    it(`a generation that exits at once is seen to exit (${readiness.type} readiness): the deploy fails and the next one runs`, async () => {
      const tmp = await tempDir();
      try {
        const v1 = await modeRelease(tmp.dir, 'v1', 'serve');
        const v2 = await modeRelease(tmp.dir, 'v2', 'serve');
        const instant = path.join(tmp.dir, 'releases', 'instant');
        await mkdir(instant, { recursive: true });
        // Dies before the agent has even finished setting up its log tail.
        await writeFile(path.join(instant, 'baton.yml'), 'command: [/bin/sh, -c, "exit 1"]\n');
        const agent = await startAgent(
          await writeConfig(tmp.dir, {
            stateDir: './state',
            apps: [webApp({ command: BY_MODE, release: v1, readiness })],
          }),
        );
        try {
          const port = listenerPort((await control(agent.socket, { method: 'status' })).result);
          for (let i = 0; i < 3; i++) {
            const err = await controlError(agent.socket, {
              method: 'deploy',
              app: 'web',
              releaseDir: instant,
            });
            assert.equal(err.code, 'GENERATION_EXITED');
          }
          assert.match((await get(port)).body, /^v1 /);
          await control(agent.socket, { method: 'deploy', app: 'web', releaseDir: v2 });
          assert.match((await get(port)).body, /^v2 /);
        } finally {
          assert.equal(await agent.stop(), 0);
        }
      } finally {
        await tmp.cleanup();
      }
    });
  }

  it('a deploy goes before a crash-restart loop that keeps failing', async () => {
    const tmp = await tempDir();
    try {
      const v1 = await modeRelease(tmp.dir, 'v1', 'serve');
      const fix = await modeRelease(tmp.dir, 'fix', 'serve');
      const agent = await startAgent(
        await writeConfig(tmp.dir, {
          stateDir: './state',
          apps: [
            webApp({
              command: BY_MODE,
              release: v1,
              restart: { initialBackoffMs: 2000, maxBackoffMs: 60_000 },
            }),
          ],
        }),
      );
      try {
        const port = listenerPort((await control(agent.socket, { method: 'status' })).result);
        // From now on v1 cannot start: every crash restart fails.
        await writeFile(path.join(v1, 'mode'), 'exits-at-start\n');
        await get(port, '/crash');
        await agent.waitFor(
          (r: Rec) => r.phase === 'failed' && r.releaseId === 'v1',
          'a failed restart',
        );
        await agent.waitFor(
          (r: Rec) => r.phase === 'restarting' && r.detail === 'in 4000 ms',
          'the next backoff',
        );
        const { result } = await control(agent.socket, {
          method: 'deploy',
          app: 'web',
          releaseDir: fix,
        });
        assert.equal((result as { releaseId: string }).releaseId, 'fix');
        assert.match((await get(port)).body, /^fix /);
      } finally {
        assert.equal(await agent.stop(), 0);
      }
    } finally {
      await tmp.cleanup();
    }
  });
});
