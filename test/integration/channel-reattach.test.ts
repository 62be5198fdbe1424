import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { AgentStatus } from '../../src/supervisor/agent.js';
import { control, load, withDeadline } from '../support/harness.js';
import {
  batonAsync,
  jsonLines,
  startChannelAgent,
  type ChannelAgent,
} from '../support/channel-support.js';
import { startCutProxy, type CutProxy } from '../support/cut-proxy.js';

interface Audit {
  event: string;
  deployId?: string;
  ok?: boolean;
  code?: string;
}

async function audit(ch: ChannelAgent): Promise<Audit[]> {
  const text = await readFile(path.join(ch.stateDir, 'audit.log'), 'utf8').catch(() => '');
  return text
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Audit);
}

async function generation(ch: ChannelAgent): Promise<{ number: number; releaseId: string }> {
  const status = (await control(ch.agent.socket, { method: 'status' })).result as AgentStatus;
  return status.apps[0]!.generation!;
}

/** Polls (bounded) until `pred` holds. */
async function until(pred: () => Promise<boolean>, what: string): Promise<void> {
  await withDeadline(
    (async () => {
      while (!(await pred())) await new Promise((r) => setTimeout(r, 50));
    })(),
    what,
  );
}

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

  it('cut mid-upload: the agent aborts that upload, the client reconnects and the deploy happens once', async () => {
    // Random bytes do not compress: the archive is about as big as the file.
    const src = await ch.source('big1', { files: { 'blob.bin': randomBytes(24 * 1024 * 1024) } });
    const before = await generation(ch);
    const traffic = load(ch.appPort, { workers: 2, keepAlive: true, maxRequests: 100_000 });
    proxy.cutAfter(6 * 1024 * 1024);
    const run = batonAsync([
      'deploy',
      src,
      '--app',
      'web',
      '--key',
      ch.keyFile,
      '--release-id',
      'big1',
      '--deploy-id',
      'cut-upload-1',
      '--json',
      ...viaProxy(),
    ]);
    const res = await run.done;
    const served = await traffic.stop();
    assert.equal(res.code, 0, res.stderr);
    const lines = jsonLines(res.stdout);
    assert.ok(
      lines.some((l) => l.type === 'note'),
      'a reconnect was reported',
    );
    const results = lines.filter((l) => l.type === 'result');
    assert.equal(results.length, 1, 'one final result');
    const outcome = results[0]!.outcome as {
      ok: boolean;
      releaseId: string;
      uploadedBytes: number;
    };
    assert.equal(outcome.ok, true);
    assert.equal(outcome.releaseId, 'big1');
    assert.ok(outcome.uploadedBytes > 24 * 1024 * 1024);
    const after = await generation(ch);
    assert.equal(after.number, before.number + 1, 'deployed exactly once');
    assert.equal(after.releaseId, 'big1');
    assert.deepEqual(served.errors, {});
    assert.equal(served.non2xx, 0);
    const log = (await audit(ch)).filter((a) => a.deployId === 'cut-upload-1');
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
    const gateFile = path.join(ch.dir, 'hook-gate');
    const hook = `while [ ! -e ${gateFile} ]; do sleep 0.05; done`;
    const src = await ch.source('hooked1', { hook });
    const before = await generation(ch);
    const run = batonAsync([
      'deploy',
      src,
      '--app',
      'web',
      '--key',
      ch.keyFile,
      '--release-id',
      'hooked1',
      '--deploy-id',
      'cut-hook-1',
      '--json',
      ...viaProxy(),
    ]);
    await ch.agent.waitFor(
      (r) => r.type === 'phase' && r.phase === 'hook-started' && r.releaseId === 'hooked1',
      'hook started',
    );
    const connectionsBefore = proxy.connections;
    proxy.cut();
    await until(async () => proxy.connections > connectionsBefore, 'the client reconnects');
    await writeFile(gateFile, 'go');
    const res = await run.done;
    assert.equal(res.code, 0, res.stderr);
    const lines = jsonLines(res.stdout);
    const results = lines.filter((l) => l.type === 'result');
    assert.equal(results.length, 1);
    assert.equal((results[0]!.outcome as { ok: boolean }).ok, true);
    // Every phase once: numbered events resume where they stopped, none twice.
    const phases = lines
      .filter((l) => l.type === 'event')
      .map((l) => (l.event as { phase?: string }).phase)
      .filter(Boolean);
    assert.equal(phases.filter((p) => p === 'switched').length, 1);
    assert.equal(phases.filter((p) => p === 'hook-started').length, 1);
    const after = await generation(ch);
    assert.equal(after.number, before.number + 1);
    assert.equal(after.releaseId, 'hooked1');
    const log = (await audit(ch)).filter((a) => a.deployId === 'cut-hook-1');
    assert.equal(log.filter((a) => a.event === 'deploy-started').length, 1);
  });

  it('client gone for good mid-upload: the old release keeps serving and nothing is stored', async () => {
    const src = await ch.source('big2', { files: { 'blob.bin': randomBytes(24 * 1024 * 1024) } });
    const before = await generation(ch);
    const run = batonAsync([
      'deploy',
      src,
      '--app',
      'web',
      '--key',
      ch.keyFile,
      '--release-id',
      'big2',
      '--deploy-id',
      'gone-upload-1',
      '--json',
      ...ch.direct,
    ]);
    await run.waitLine((l) => l.includes('"progress"'), 'upload under way');
    process.kill(run.pid, 'SIGKILL');
    await run.done;
    await until(
      async () =>
        (await audit(ch)).some(
          (a) => a.deployId === 'gone-upload-1' && a.event === 'deploy-finished',
        ),
      'the agent ends the deploy',
    );
    const finished = (await audit(ch)).find(
      (a) => a.deployId === 'gone-upload-1' && a.event === 'deploy-finished',
    )!;
    assert.equal(finished.ok, false);
    assert.equal(finished.code, 'UPLOAD_INCOMPLETE');
    assert.deepEqual(await generation(ch), before);
    assert.deepEqual(await readdir(path.join(ch.stateDir, 'apps', 'web', 'tmp')), []);
    const releases = (await control(ch.agent.socket, { method: 'releases', app: 'web' }))
      .result as { id: string }[];
    assert.ok(!releases.some((r) => r.id === 'big2'));
  });

  it('client gone for good mid-hook: the agent completes the deploy; a new client re-attaches by id', async () => {
    const gateFile = path.join(ch.dir, 'hook-gate-2');
    const src = await ch.source('hooked2', {
      hook: `while [ ! -e ${gateFile} ]; do sleep 0.05; done`,
    });
    const before = await generation(ch);
    const args = [
      'deploy',
      src,
      '--app',
      'web',
      '--key',
      ch.keyFile,
      '--release-id',
      'hooked2',
      '--deploy-id',
      'gone-hook-1',
      '--json',
      ...ch.direct,
    ];
    const first = batonAsync(args);
    await ch.agent.waitFor(
      (r) => r.type === 'phase' && r.phase === 'hook-started' && r.releaseId === 'hooked2',
      'hook started',
    );
    process.kill(first.pid, 'SIGKILL');
    await first.done;
    await writeFile(gateFile, 'go');
    await ch.agent.waitFor(
      (r) => r.type === 'phase' && r.phase === 'done' && r.releaseId === 'hooked2',
      'the deploy finishes with no client',
    );
    const second = batonAsync(args);
    const res = await second.done;
    assert.equal(res.code, 0, res.stderr);
    const outcome = jsonLines(res.stdout).find((l) => l.type === 'result')!.outcome as {
      ok: boolean;
      releaseId: string;
    };
    assert.equal(outcome.ok, true);
    assert.equal(outcome.releaseId, 'hooked2');
    assert.equal((await generation(ch)).number, before.number + 1, 'not deployed twice');
    const log = (await audit(ch)).filter((a) => a.deployId === 'gone-hook-1');
    assert.equal(log.filter((a) => a.event === 'deploy-started').length, 1);
    assert.equal(log.filter((a) => a.event === 'deploy-attached').length, 1);
  });
});
