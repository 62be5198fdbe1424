import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { WebSocket } from 'ws';
import { clientMac, makeNonce } from '../../src/transport/auth.js';
import { batonAsync } from '../../support/baton-cli.js';
import { type ChannelAgent, startChannelAgent } from '../../support/channel-agent.js';
import { withDeadline } from '../../support/deadline.js';
import { startLoad } from '../../support/load-client.js';
import { readAudit } from '../support/audit-log.js';
import { outcomeOf, phasesOf } from '../support/cli-output.js';

describe('remote deploys over the channel, direct ws:// on loopback', () => {
  let ch: ChannelAgent;
  before(async () => {
    ch = await startChannelAgent();
  });
  after(async () => {
    await ch?.cleanup();
  });

  it('deploys a directory under load with every phase streamed, then redeploys it sending 0 bytes', async () => {
    const src = await ch.source('v1');
    const traffic = startLoad(ch.appPort, { workers: 4, keepAlive: true, maxRequests: 100_000 });
    const run = batonAsync(ch.deployArgs(src, 'v1', ...ch.direct));
    const res = await run.done;
    const served = await traffic.stop();
    assert.equal(res.code, 0, res.stderr);
    const phases = phasesOf(res.stdout);
    for (const p of [
      'received',
      'verified',
      'unpacked',
      'generation-started',
      'ready',
      'switched',
      'drained',
      'done',
    ])
      assert.ok(phases.includes(p), `phase ${p} in ${phases.join(',')}`);
    const result = outcomeOf(res.stdout);
    assert.equal(result.ok, true);
    assert.equal(result.releaseId, 'v1');
    assert.ok(result.uploadedBytes > 0);
    assert.ok('received' in result.phases && 'done' in result.phases);
    assert.deepEqual(served.errors, {});
    assert.equal(served.non2xx, 0);
    assert.ok(served.bodies.has('v1'), 'the new release answered');

    const again = batonAsync(ch.deployArgs(src, 'v1', ...ch.direct));
    const res2 = await again.done;
    assert.equal(res2.code, 0, res2.stderr);
    const outcome2 = outcomeOf(res2.stdout);
    assert.equal(outcome2.ok, true);
    assert.equal(outcome2.uploadedBytes, 0);

    const audit = await readAudit(ch);
    assert.equal(audit.filter((a) => a.event === 'deploy-finished' && a.ok).length, 2);
  });
});

describe('heartbeats', () => {
  it('the agent drops a peer that stops answering pings, and keeps a live one', async () => {
    const ch = await startChannelAgent({ heartbeatMs: 300 });
    try {
      const open = (autoPong: boolean) =>
        new Promise<WebSocket>((resolve, reject) => {
          const ws = new WebSocket(`ws://127.0.0.1:${ch.channelPort}`, { autoPong });
          ws.once('open', () => resolve(ws));
          ws.once('error', reject);
        });
      const handshake = async (ws: WebSocket) => {
        const next = () =>
          new Promise<{ type: string; nonce?: string }>((resolve) =>
            ws.once('message', (d: Buffer) =>
              resolve(JSON.parse(d.toString()) as { type: string }),
            ),
          );
        ws.send(JSON.stringify({ type: 'hello', protocols: [1], client: 'test' }));
        const challenge = await next();
        const clientNonce = makeNonce();
        ws.send(
          JSON.stringify({
            type: 'auth',
            clientNonce,
            mac: clientMac(ch.token, challenge.nonce!, clientNonce),
          }),
        );
        assert.equal((await next()).type, 'welcome');
      };
      const dead = await open(false);
      const live = await open(true);
      await handshake(dead);
      await handshake(live);
      const closed = await withDeadline(
        new Promise<number>((resolve) => dead.once('close', (code) => resolve(code))),
        'the agent drops the silent peer',
      );
      assert.equal(closed, 1006, 'terminated, not closed politely');
      assert.equal(live.readyState, WebSocket.OPEN);
      live.close();
    } finally {
      await ch.cleanup();
    }
  });
});

describe('an agent with a small maxPayload', () => {
  it('takes an upload: the client sizes its frames to the limit the agent announces', async () => {
    const ch = await startChannelAgent({ maxPayload: 65_536 });
    try {
      const src = await ch.source('small-frames', {
        files: { 'blob.bin': randomBytes(1024 * 1024) },
      });
      const res = await batonAsync(ch.deployArgs(src, 'small-frames', ...ch.direct)).done;
      assert.equal(res.code, 0, res.stderr);
      assert.equal(outcomeOf(res.stdout).releaseId, 'small-frames');
    } finally {
      await ch.cleanup();
    }
  });
});
