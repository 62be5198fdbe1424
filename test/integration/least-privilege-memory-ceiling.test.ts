// The memory ceiling: an app over it is replaced through a handover, even when the restart has to wait.
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { isAlive } from '../../src/supervisor/process-util.js';
import { releases } from '../../support/agent-config.js';
import { controlError } from '../../support/control.js';
import { get } from '../../support/http-get.js';
import { startLoad } from '../../support/load-client.js';
import { gatedHook } from '../support/gates.js';
import { NOBODY, passableTempDir, startProbe } from '../support/privilege-probe.js';

describe('the memory ceiling', () => {
  it('an app over its memory ceiling is restarted through a handover, with 0 failed requests', async () => {
    const probe = await startProbe({
      limits: { memoryBytes: 120 * 2 ** 20, memoryCheckMs: 200 },
    });
    try {
      const first = await probe.status();
      const oldPid = first.generation!.pid;
      const traffic = startLoad(probe.port, { workers: 2, keepAlive: false, maxRequests: 50_000 });
      const grown = await get(probe.port, '/grow');
      assert.equal(grown.status, 200, grown.body);
      await probe.agent.waitFor(
        (r) => r.type === 'phase' && r.phase === 'switched' && r.generation === 2,
        'generation 2 to take over',
      );
      const drained = await probe.agent.waitFor(
        (r) => r.type === 'phase' && r.phase === 'drained' && r.generation === 1,
        'generation 1 to be drained',
      );
      const served = await traffic.stop();
      assert.deepEqual(served.errors, {});
      assert.equal(served.non2xx, 0);
      assert.ok(served.ok > 0);
      assert.doesNotMatch(String(drained.detail), /killed/);
      assert.ok(
        probe.agent.events.some(
          (e) => e.type === 'log' && e.source === 'gen-1:notify' && /memory ceiling/.test(e.line),
        ),
        'the agent says why',
      );
      assert.ok(
        !probe.agent.events.some((e) => e.type === 'phase' && e.phase === 'crashed'),
        'a handover, not a crash',
      );
      const now = await probe.status();
      assert.equal(now.generation?.number, 2);
      assert.notEqual(now.generation?.pid, oldPid);
      assert.equal(now.release?.id, 'r0');
      assert.equal(isAlive(oldPid), false);
      assert.match((await get(probe.port)).body, /^r0 2 /);
      assert.equal((await probe.whoami()).uid, NOBODY);
    } finally {
      await probe.cleanup();
    }
  });
});

describe('the memory ceiling, when the restart has to wait', () => {
  it('a generation that grew over it during a deploy that then failed is restarted after all', async () => {
    const tmpGate = await passableTempDir();
    const gate = gatedHook(tmpGate.dir, 'gate');
    const probe = await startProbe({
      limits: { memoryBytes: 120 * 2 ** 20, memoryCheckMs: 200 },
      restart: { maxBackoffMs: 500 },
      hooks: { beforeRestart: gate.hook },
    });
    try {
      // A release whose generation exits at once: its deploy fails, generation 1 serves on.
      const [bad] = await releases(probe.dir, 'bad');
      await writeFile(path.join(bad!, 'baton.yml'), "command: [/bin/sh, -c, 'exit 3']\n");
      const deploying = controlError(probe.agent.socket, {
        method: 'deploy',
        app: 'web',
        releaseDir: bad!,
      });
      await probe.agent.waitFor(
        (r) => r.type === 'phase' && r.phase === 'hook-started' && r.hook === 'beforeRestart',
        'the deploy to reach its hook',
      );
      // Over the ceiling while the deploy runs: the restart has to wait for it.
      assert.equal((await get(probe.port, '/grow')).status, 200);
      await probe.agent.waitFor(
        (r) =>
          r.type === 'log' && r.source === 'gen-1:notify' && /memory ceiling/.test(String(r.line)),
        'the agent to see it',
      );
      await gate.open();
      assert.equal((await deploying).code, 'GENERATION_EXITED');
      await probe.agent.waitFor(
        (r) => r.type === 'phase' && r.phase === 'switched' && r.generation === 3,
        'the memory restart, once the deploy is over',
      );
      await probe.agent.waitFor(
        (r) => r.type === 'phase' && r.phase === 'drained' && r.generation === 1,
        'generation 1 to be drained',
      );
      assert.match((await get(probe.port)).body, /^r0 3 /);
    } finally {
      await probe.cleanup();
      await tmpGate.cleanup();
    }
  });
});
