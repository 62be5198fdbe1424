import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { batonAsync } from '../../support/baton-cli.js';
import { type ChannelAgent, startChannelAgent } from '../../support/channel-agent.js';
import { control } from '../../support/control.js';
import { waitUntil } from '../../support/deadline.js';
import { startLoad } from '../../support/load-client.js';
import { readAudit } from '../support/audit-log.js';
import { jsonLines, outcomeOf, phasesOf } from '../support/cli-output.js';
import { gatedHook } from '../support/gates.js';
import { startCutProxy, type CutProxy } from '../support/cut-proxy.js';

describe('a dropped connection: the deploy comes to one consistent end, and re-attaches', () => {
  let ch: ChannelAgent;
  let proxy: CutProxy;
  before(async () => {
    ch = await startChannelAgent();
    proxy = await startCutProxy(ch.channelPort);
  });
  after(async () => {
    await proxy?.close();
    await ch?.cleanup();
  });
  const viaProxy = () => ['--agent', `ws://127.0.0.1:${proxy.port}`, '--token-file', ch.tokenFile];

  // 4 MiB is under what the client keeps in flight: every byte is handed to the socket before
  // the cut, and only the agent knows the upload did not arrive.
  for (const [mib, cutMib] of [
    [24, 6],
    [4, 2],
  ] as const)
    it(`cut mid-upload (${mib} MiB, at ${cutMib}): the agent aborts that upload, the client reconnects and the deploy happens once`, async () => {
      const id = `big${mib}`;
      // Random bytes do not compress: the archive is about as big as the file.
      const src = await ch.source(id, { files: { 'blob.bin': randomBytes(mib * 1024 * 1024) } });
      const before = await ch.generation();
      const traffic = startLoad(ch.appPort, { workers: 2, keepAlive: true, maxRequests: 100_000 });
      proxy.cutAfter(cutMib * 1024 * 1024);
      const run = batonAsync(
        ch.deployArgs(src, id, '--deploy-id', `cut-upload-${mib}`, ...viaProxy()),
      );
      const res = await run.done;
      const served = await traffic.stop();
      assert.equal(res.code, 0, res.stderr);
      const lines = jsonLines(res.stdout);
      assert.ok(
        lines.some((l) => l.type === 'note'),
        'a reconnect was reported',
      );
      const outcome = outcomeOf(res.stdout);
      assert.equal(outcome.ok, true);
      assert.equal(outcome.releaseId, id);
      assert.ok(outcome.uploadedBytes > mib * 1024 * 1024);
      const after = await ch.generation();
      assert.equal(after.number, before.number + 1, 'deployed exactly once');
      assert.equal(after.releaseId, id);
      assert.deepEqual(served.errors, {});
      assert.equal(served.non2xx, 0);
      const log = (await readAudit(ch)).filter((a) => a.deployId === `cut-upload-${mib}`);
      const finished = log.filter((a) => a.event === 'deploy-finished');
      assert.deepEqual(
        finished.map((a) => [a.ok, a.code]),
        [
          [false, 'UPLOAD_INCOMPLETE'],
          [true, undefined],
        ],
      );
      // The aborted upload left nothing behind.
      assert.deepEqual(await readdir(path.join(ch.stateDir, 'apps', 'web', 'tmp')), []);
    });

  it('cut mid-hook: the agent finishes on its own, the client re-attaches and gets the one result', async () => {
    const gate = gatedHook(ch.dir, 'hook-gate');
    const src = await ch.source('hooked1', { hook: gate.hook });
    const before = await ch.generation();
    const run = batonAsync(
      ch.deployArgs(src, 'hooked1', '--deploy-id', 'cut-hook-1', ...viaProxy()),
    );
    await ch.agent.waitFor(
      (r) => r.type === 'phase' && r.phase === 'hook-started' && r.releaseId === 'hooked1',
      'hook started',
    );
    const connectionsBefore = proxy.connections;
    proxy.cut();
    await waitUntil(() => proxy.connections > connectionsBefore, 'the client reconnects');
    await gate.open();
    const res = await run.done;
    assert.equal(res.code, 0, res.stderr);
    assert.equal(outcomeOf(res.stdout).ok, true);
    // Every phase once: numbered events resume where they stopped, none twice.
    const phases = phasesOf(res.stdout);
    assert.equal(phases.filter((p) => p === 'switched').length, 1);
    assert.equal(phases.filter((p) => p === 'hook-started').length, 1);
    const after = await ch.generation();
    assert.equal(after.number, before.number + 1);
    assert.equal(after.releaseId, 'hooked1');
    const log = (await readAudit(ch)).filter((a) => a.deployId === 'cut-hook-1');
    assert.equal(log.filter((a) => a.event === 'deploy-started').length, 1);
  });

  it('client gone for good mid-upload: the old release keeps serving and nothing is stored', async () => {
    const src = await ch.source('big2', { files: { 'blob.bin': randomBytes(24 * 1024 * 1024) } });
    const before = await ch.generation();
    const run = batonAsync(
      ch.deployArgs(src, 'big2', '--deploy-id', 'gone-upload-1', ...ch.direct),
      // Killed with SIGKILL, it cannot remove its packing dir: keep that in the test's own.
      { TMPDIR: ch.dir },
    );
    await run.waitLine((l) => l.includes('"progress"'), 'upload under way');
    process.kill(run.pid, 'SIGKILL');
    await run.done;
    await waitUntil(
      async () =>
        (await readAudit(ch)).some(
          (a) => a.deployId === 'gone-upload-1' && a.event === 'deploy-finished',
        ),
      'the agent ends the deploy',
    );
    const finished = (await readAudit(ch)).find(
      (a) => a.deployId === 'gone-upload-1' && a.event === 'deploy-finished',
    )!;
    assert.equal(finished.ok, false);
    assert.equal(finished.code, 'UPLOAD_INCOMPLETE');
    assert.equal(finished.uploadedBytes, 0, 'bytes of a cut upload do not count');
    assert.deepEqual(await ch.generation(), before);
    assert.deepEqual(await readdir(path.join(ch.stateDir, 'apps', 'web', 'tmp')), []);
    const releases = (await control(ch.agent.socket, { method: 'releases', app: 'web' }))
      .result as { id: string }[];
    assert.ok(!releases.some((r) => r.id === 'big2'));
  });

  it('client gone for good mid-hook: the agent completes the deploy; a new client re-attaches by id', async () => {
    const gate = gatedHook(ch.dir, 'hook-gate-2');
    const src = await ch.source('hooked2', {
      hook: gate.hook,
    });
    const before = await ch.generation();
    const args = ch.deployArgs(src, 'hooked2', '--deploy-id', 'gone-hook-1', ...ch.direct);
    // Killed with SIGKILL, it cannot remove its packing dir: keep that in the test's own.
    const first = batonAsync(args, { TMPDIR: ch.dir });
    await ch.agent.waitFor(
      (r) => r.type === 'phase' && r.phase === 'hook-started' && r.releaseId === 'hooked2',
      'hook started',
    );
    process.kill(first.pid, 'SIGKILL');
    await first.done;
    await gate.open();
    await ch.agent.waitFor(
      (r) => r.type === 'phase' && r.phase === 'done' && r.releaseId === 'hooked2',
      'the deploy finishes with no client',
    );
    const second = batonAsync(args);
    const res = await second.done;
    assert.equal(res.code, 0, res.stderr);
    const outcome = outcomeOf(res.stdout);
    assert.equal(outcome.ok, true);
    assert.equal(outcome.releaseId, 'hooked2');
    assert.equal((await ch.generation()).number, before.number + 1, 'not deployed twice');
    const log = (await readAudit(ch)).filter((a) => a.deployId === 'gone-hook-1');
    assert.equal(log.filter((a) => a.event === 'deploy-started').length, 1);
    assert.equal(log.filter((a) => a.event === 'deploy-attached').length, 1);
  });
});
