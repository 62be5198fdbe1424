import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { webApp, writeConfig } from '../../support/agent-config.js';
import { type RunningAgent, startAgent } from '../../support/agent-process.js';
import { appStatus, control, listenerPort } from '../../support/control.js';
import { withDeadline } from '../../support/deadline.js';
import { get, getWithConnect } from '../../support/http-get.js';
import { tempDir } from '../../support/temp-dir.js';
import { gate } from '../support/gates.js';
import { BY_MODE, modeRelease, startModeAgent, type ModeAgent } from '../support/mode-release.js';

type Rec = Record<string, unknown>;

describe('crash supervision', () => {
  let tmp: ModeAgent['tmp'];
  let agent: RunningAgent;
  let port: number;
  let v1: string;

  before(async () => {
    ({ tmp, v1, agent, port } = await startModeAgent({
      // A window with no generation at all after each crash. resetAfterMs: 1 keeps the
      // backoff from doubling between this file's crashes (each generation "served" long enough).
      restart: { initialBackoffMs: 1500, resetAfterMs: 1 },
    }));
  });
  after(async () => {
    await agent?.stop();
    await tmp?.cleanup();
  });

  const phase = (name: string, generation?: number) => (r: Rec) =>
    r.type === 'phase' &&
    r.app === 'web' &&
    r.phase === name &&
    (generation === undefined || r.generation === generation);

  /** Crashes the serving generation through the fixture's /crash; resolves once the agent saw it exit. */
  async function crash(): Promise<{ number: number; pid: number }> {
    const gen = (await appStatus(agent.socket)).generation!;
    const res = await get(port, '/crash');
    assert.equal(res.status, 200);
    assert.equal(res.body, 'bye\n');
    await agent.waitFor(phase('crashed', gen.number), `gen ${gen.number} crashed`);
    return gen;
  }

  /** Resolves once generation `number` has started and waits at the gate, not listening. */
  const atGate = (number: number) =>
    agent.waitFor(
      (r) => r.type === 'log' && r.source === `gen-${number}` && r.line === 'waiting at the gate',
      `gen ${number} at the gate`,
    );

  it('restarts a crashed generation: crashed, restarting, ready, switched, and it answers again', async () => {
    const old = await crash();
    const switched = await agent.waitFor(
      (r) => phase('switched')(r) && (r.generation as number) > old.number,
      'a new generation switched in',
    );
    const next = switched.generation as number;
    const log = agent.events as unknown as Rec[];
    const at = (pred: (r: Rec) => boolean) => log.findIndex(pred);
    const crashedAt = at(phase('crashed', old.number));
    const restartingAt = log.findIndex((r, i) => i > crashedAt && phase('restarting')(r));
    const readyAt = at(phase('ready', next));
    const switchedAt = at(phase('switched', next));
    assert.ok(crashedAt >= 0, 'no crashed phase');
    assert.ok(
      crashedAt < restartingAt && restartingAt < readyAt && readyAt < switchedAt,
      `phases out of order: crashed ${crashedAt}, restarting ${restartingAt}, ready ${readyAt}, switched ${switchedAt}`,
    );
    assert.equal(log[restartingAt]!.releaseId, 'v1');

    const [release, generation, pid] = (await get(port)).body.trim().split(' ');
    assert.equal(release, 'v1');
    assert.equal(Number(generation), next);
    assert.notEqual(Number(pid), old.pid);
    const status = await appStatus(agent.socket);
    assert.equal(status.restarts, 1);
    assert.equal(status.state, 'running');
    assert.equal(status.generation?.number, next);
    assert.equal(status.release?.id, 'v1');
  });

  it('queues a request sent while no generation runs and answers it from the next one, never refusing it', async () => {
    // The next generation waits at this gate before it listens, so until the test opens it
    // nothing at all accepts: the request can only wait in the listener's kernel queue.
    const held = await gate(v1);
    try {
      const old = await crash();
      const queued = getWithConnect(port);
      let answered = false;
      queued.response.then(
        () => (answered = true),
        () => undefined,
      );
      await withDeadline(queued.connected, 'connect while no generation runs');
      const waiting = await atGate(old.number + 1);
      assert.equal(answered, false, 'answered while no generation was accepting');
      await held.open();
      const res = await withDeadline(queued.response, 'queued request').catch(
        (err: NodeJS.ErrnoException) =>
          assert.fail(`the request sent after the crash failed: ${err.code ?? err.message}`),
      );
      assert.equal(res.status, 200);
      const [release, generation] = res.body.trim().split(' ');
      assert.equal(release, 'v1');
      assert.equal(`gen-${generation}`, waiting.source);
      assert.equal((await appStatus(agent.socket)).restarts, 2);
    } finally {
      await held.close();
    }
  });

  it('says "restarting" in status while a crashed app waits for its next generation', async () => {
    const held = await gate(v1);
    let next: number | undefined;
    try {
      next = (await crash()).number + 1;
      await atGate(next);
      const during = await appStatus(agent.socket);
      assert.equal(
        during.state,
        'restarting',
        `state "${during.state}", deploy "${during.deploy}"`,
      );
    } finally {
      await held.open();
      // Closing our end before the generation read the word would strand it.
      if (next !== undefined) await agent.waitFor(phase('switched', next), `gen ${next} switched`);
      await held.close();
    }
    assert.equal((await appStatus(agent.socket)).state, 'running');
  });
});

describe('stopping during a crash-restart backoff', () => {
  it('cuts the backoff short: the agent stops instead of waiting it out', async () => {
    const tmp = await tempDir();
    try {
      const v1 = await modeRelease(tmp.dir, 'v1', 'serve');
      const agent = await startAgent(
        await writeConfig(tmp.dir, {
          stateDir: './state',
          // A backoff far longer than the harness's hung-test deadline.
          apps: [webApp({ command: BY_MODE, release: v1, restart: { initialBackoffMs: 600_000 } })],
        }),
      );
      const port = listenerPort((await control(agent.socket, { method: 'status' })).result);
      await get(port, '/crash');
      await agent.waitFor((r: Rec) => r.phase === 'restarting', 'restarting');
      assert.equal(await agent.stop(), 0);
    } finally {
      await tmp.cleanup();
    }
  });
});
