import assert from 'node:assert/strict';
import { readFile, stat } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { WebSocketServer } from 'ws';
import { deployToHost, type HostPlan } from '../../src/deploy/host-deploy.js';
import { PROTOCOL_VERSION, type DeployOutcome } from '../../src/protocol/channel.js';
import type { SignedManifest } from '../../src/protocol/manifest.js';
import type { ReleaseInfo } from '../../src/protocol/results.js';
import { agentProof, clientMac, makeNonce, makeToken } from '../../src/transport/auth.js';
import { AgentClient } from '../../src/transport/client.js';
import { directDialer, type Dialer } from '../../src/transport/dialer.js';
import { batonSync } from '../../support/baton-cli.js';
import { type ChannelAgent, startChannelAgent } from '../../support/channel-agent.js';
import { control } from '../../support/control.js';
import { withDeadline } from '../../support/deadline.js';
import { get } from '../../support/http-get.js';
import { startLoad } from '../../support/load-client.js';
import { rejectsWith } from '../support/artifact-support.js';
import { readAudit } from '../support/audit-log.js';
import { gatedHook } from '../support/gates.js';
import { RawClient } from '../support/raw-client.js';

/*
 * The two passes of a fleet deploy against a real agent: `stage` puts a release in the store
 * and leaves what runs alone; `switch` hands over to it. Both are protocol 2: a connection that
 * chose 1 is refused them, and the client does not send them to an agent that speaks only 1.
 */

interface Packed {
  signed: SignedManifest;
  archive: string;
  size: number;
}

/** `baton pack` of a release of the `web` fixture, signed with the key the agent trusts. */
async function pack(ch: ChannelAgent, id: string, hook?: string): Promise<Packed> {
  const src = await ch.source(id, hook === undefined ? {} : { hook });
  const out = path.join(ch.dir, 'packed');
  const args = ['pack', src, '--app', 'web', '--out', out, '--key', ch.keyFile];
  const r = batonSync([...args, '--release-id', id]);
  assert.equal(r.status, 0, r.stderr);
  const archive = path.join(out, `${id}.tar.gz`);
  const signed = JSON.parse(
    await readFile(path.join(out, `${id}.manifest.json`), 'utf8'),
  ) as SignedManifest;
  return { signed, archive, size: (await stat(archive)).size };
}

const origin = { actor: 'stage-switch-test' };

function run(ch: ChannelAgent, plan: HostPlan, dialer?: Dialer): Promise<DeployOutcome> {
  return withDeadline(
    deployToHost(
      dialer ?? directDialer(`ws://127.0.0.1:${ch.channelPort}`),
      ch.token,
      plan,
      { event: () => undefined, note: () => undefined },
      { reconnects: 0 },
    ),
    `${plan.kind} ${plan.deployId}`,
  );
}

/** Which release answers on the app's port (the fixture says its release id first). */
async function serving(ch: ChannelAgent): Promise<string> {
  const res = await get(ch.appPort);
  assert.equal(res.status, 200);
  return res.body.split(' ')[0]!;
}

async function releases(ch: ChannelAgent): Promise<ReleaseInfo[]> {
  return (await control(ch.agent.socket, { method: 'releases', app: 'web' }))
    .result as ReleaseInfo[];
}

describe('stage, then switch: the two passes of a fleet deploy', () => {
  let ch: ChannelAgent;
  let a: Packed;
  let b: Packed;
  before(async () => {
    ch = await startChannelAgent();
    a = await pack(ch, 'rel-a');
    b = await pack(ch, 'rel-b');
    const deployed = await run(ch, {
      kind: 'deploy',
      deployId: 'deploy-a',
      app: 'web',
      manifest: a.signed,
      archive: a.archive,
      origin,
    });
    assert.equal(deployed.ok, true, JSON.stringify(deployed.error));
    assert.equal(await serving(ch), 'rel-a');
  });
  after(async () => {
    await ch?.cleanup();
  });

  it('the client learns the protocol the agent chose: the newest both speak', async () => {
    const client = await AgentClient.connect(
      directDialer(`ws://127.0.0.1:${ch.channelPort}`),
      ch.token,
    );
    try {
      assert.equal(client.protocol, PROTOCOL_VERSION);
      assert.equal(client.protocol, 2);
    } finally {
      client.close();
    }
  });

  it('stage under load: the release is stored, uploaded once, and A keeps serving untouched', async () => {
    const before = await ch.generation();
    const traffic = startLoad(ch.appPort, { workers: 2, keepAlive: true, maxRequests: 100_000 });
    const phases: string[] = [];
    const staged = await withDeadline(
      deployToHost(
        directDialer(`ws://127.0.0.1:${ch.channelPort}`),
        ch.token,
        {
          kind: 'stage',
          deployId: 'stage-b-1',
          app: 'web',
          manifest: b.signed,
          archive: b.archive,
          origin,
        },
        {
          event: (e) => void (e.type === 'phase' && phases.push(e.phase)),
          note: () => undefined,
        },
        { reconnects: 0 },
      ),
      'stage',
    );
    const served = await traffic.stop();
    assert.equal(staged.ok, true, JSON.stringify(staged.error));
    assert.equal(staged.kind, 'stage');
    assert.equal(staged.releaseId, 'rel-b');
    assert.equal(staged.uploadedBytes, b.size);
    assert.equal(staged.generation, undefined, 'a stage starts no generation');
    assert.deepEqual(phases, ['received', 'verified', 'unpacked']);
    // What runs is not touched: the same generation, still A, no request lost.
    assert.deepEqual(await ch.generation(), before);
    assert.equal(await serving(ch), 'rel-a');
    assert.deepEqual(served.errors, {});
    assert.equal(served.non2xx, 0);
    assert.deepEqual([...served.bodies], ['rel-a'], 'only A answered during the stage');
    const b2 = (await releases(ch)).find((r) => r.id === 'rel-b');
    assert.equal(b2?.status, 'kept', 'stored, neither current nor failed');

    // The same id again is the same stage: re-attached, the one outcome.
    const again = await run(ch, {
      kind: 'stage',
      deployId: 'stage-b-1',
      app: 'web',
      manifest: b.signed,
      archive: b.archive,
      origin,
    });
    assert.deepEqual(again, staged);
  });

  it('stage again with the same digest (a new id): nothing is uploaded', async () => {
    const staged = await run(ch, {
      kind: 'stage',
      deployId: 'stage-b-2',
      app: 'web',
      manifest: b.signed,
      archive: b.archive,
      origin,
    });
    assert.equal(staged.ok, true, JSON.stringify(staged.error));
    assert.equal(staged.uploadedBytes, 0);
    assert.equal(await serving(ch), 'rel-a');
  });

  it('a deploy id used for a stage is not taken for a switch', async () => {
    await rejectsWith(
      () => run(ch, { kind: 'switch', deployId: 'stage-b-1', app: 'web', to: 'rel-b', origin }),
      'PROTOCOL_VIOLATION',
    );
    assert.equal(await serving(ch), 'rel-a');
  });

  it('switch under load: B serves, the outcome names A as the previous release', async () => {
    const before = await ch.generation();
    const traffic = startLoad(ch.appPort, { workers: 2, keepAlive: true, maxRequests: 100_000 });
    const switched = await run(ch, {
      kind: 'switch',
      deployId: 'switch-b-1',
      app: 'web',
      to: 'rel-b',
      origin,
    });
    const served = await traffic.stop();
    assert.equal(switched.ok, true, JSON.stringify(switched.error));
    assert.equal(switched.kind, 'switch');
    assert.equal(switched.releaseId, 'rel-b');
    assert.equal(switched.previousReleaseId, 'rel-a');
    assert.equal(switched.uploadedBytes, 0);
    assert.equal(switched.generation, before.number + 1);
    assert.ok('switched' in switched.phases, Object.keys(switched.phases).join(','));
    assert.equal(await serving(ch), 'rel-b');
    assert.deepEqual(served.errors, {});
    assert.equal(served.non2xx, 0);
  });

  it('switch to the release that serves: refused ALREADY_CURRENT, nothing restarted', async () => {
    const before = await ch.generation();
    const outcome = await run(ch, {
      kind: 'switch',
      deployId: 'switch-b-2',
      app: 'web',
      to: 'rel-b',
      origin,
    });
    assert.equal(outcome.ok, false);
    assert.equal(outcome.kind, 'switch');
    assert.equal(outcome.error?.code, 'ALREADY_CURRENT');
    assert.deepEqual(await ch.generation(), before);
    assert.equal(await serving(ch), 'rel-b');
    // Refused, not failed: B is not marked.
    assert.equal((await releases(ch)).find((r) => r.id === 'rel-b')?.status, 'current');
  });

  it('switch to a release the host does not hold: refused RELEASE_UNKNOWN, B keeps serving', async () => {
    const before = await ch.generation();
    const outcome = await run(ch, {
      kind: 'switch',
      deployId: 'switch-nope',
      app: 'web',
      to: 'rel-nope',
      origin,
    });
    assert.equal(outcome.ok, false);
    assert.equal(outcome.error?.code, 'RELEASE_UNKNOWN');
    assert.deepEqual(await ch.generation(), before);
    assert.equal(await serving(ch), 'rel-b');
  });

  it('a stage takes the app’s deploy lock: DEPLOY_BUSY while a deploy runs', async () => {
    const gate = gatedHook(ch.dir, 'stage-busy-gate');
    const held = await pack(ch, 'rel-held', gate.hook);
    const c = await pack(ch, 'rel-c');
    const deploying = run(ch, {
      kind: 'deploy',
      deployId: 'deploy-held',
      app: 'web',
      manifest: held.signed,
      archive: held.archive,
      origin,
    });
    await ch.agent.waitFor(
      (r) => r.type === 'phase' && r.phase === 'hook-started' && r.releaseId === 'rel-held',
      'the held deploy at its hook',
    );
    try {
      await rejectsWith(
        () =>
          run(ch, {
            kind: 'stage',
            deployId: 'stage-c-busy',
            app: 'web',
            manifest: c.signed,
            archive: c.archive,
            origin,
          }),
        'DEPLOY_BUSY',
      );
      await rejectsWith(
        () =>
          run(ch, { kind: 'switch', deployId: 'switch-a-busy', app: 'web', to: 'rel-a', origin }),
        'DEPLOY_BUSY',
      );
    } finally {
      await gate.open();
    }
    assert.equal((await deploying).ok, true);
    assert.ok(!(await releases(ch)).some((r) => r.id === 'rel-c'), 'the busy stage stored nothing');
  });

  it('the audit log names the kind of each', async () => {
    const audit = await readAudit(ch);
    const kinds = (id: string) =>
      audit.filter((l) => l.deployId === id).map((l) => [l.event, l.kind, l.ok, l.code]);
    assert.deepEqual(kinds('stage-b-1'), [
      ['deploy-started', 'stage', undefined, undefined],
      ['deploy-finished', 'stage', true, undefined],
      ['deploy-attached', 'stage', undefined, undefined],
    ]);
    assert.deepEqual(kinds('switch-b-1'), [
      ['deploy-started', 'switch', undefined, undefined],
      ['deploy-finished', 'switch', true, undefined],
    ]);
    assert.deepEqual(kinds('switch-b-2'), [
      ['deploy-started', 'switch', undefined, undefined],
      ['deploy-finished', 'switch', false, 'ALREADY_CURRENT'],
    ]);
  });

  it('a client that said hello with protocol 1 is refused stage and switch; its connection goes on', async () => {
    const c = await RawClient.open(ch.channelPort);
    try {
      c.send({ type: 'hello', protocols: [1], client: 'protocol-1-client' });
      const challenge = await c.next('challenge', 'challenge');
      assert.equal(challenge.protocol, 1);
      const clientNonce = makeNonce();
      c.send({ type: 'auth', clientNonce, mac: clientMac(ch.token, challenge.nonce, clientNonce) });
      await c.next('welcome', 'welcome');
      const d = await pack(ch, 'rel-d');
      c.send({ type: 'stage', deployId: 'p1-stage', app: 'web', manifest: d.signed, origin });
      const stage = await c.next('error', 'the stage refused', (m) => m.deployId === 'p1-stage');
      assert.equal(stage.code, 'PROTOCOL_MISMATCH');
      assert.match(stage.message, /protocol 2/);
      assert.match(stage.message, /protocol 1/);
      c.send({ type: 'switch', deployId: 'p1-switch', app: 'web', to: 'rel-a', origin });
      const sw = await c.next('error', 'the switch refused', (m) => m.deployId === 'p1-switch');
      assert.equal(sw.code, 'PROTOCOL_MISMATCH');
      // Refused, not closed: protocol 1 requests still work on it.
      c.send({ type: 'status', requestId: 'after' });
      await c.next('reply', 'a status reply', (m) => m.requestId === 'after');
      assert.equal(c.closedWith, undefined);
    } finally {
      c.close();
    }
    assert.ok(!c.received.some((m) => m.type === 'accepted' || m.type === 'upload'));
    assert.ok(!(await releases(ch)).some((r) => r.id === 'rel-d'), 'nothing staged');
    assert.equal(await serving(ch), 'rel-held');
    const audit = await readAudit(ch);
    assert.ok(!audit.some((l) => l.deployId === 'p1-stage' || l.deployId === 'p1-switch'));
  });
});

describe('an agent that speaks protocol 1 only', () => {
  /**
   * The handshake of an agent from before protocol 2, and nothing after it: what a client
   * sends once authenticated is kept for the test to look at.
   */
  let server: WebSocketServer;
  const token = makeToken();
  const afterAuth: unknown[] = [];
  before(async () => {
    server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    server.on('connection', (ws) => {
      const nonce = makeNonce();
      ws.on('message', (data: Buffer) => {
        const msg = JSON.parse(data.toString('utf8')) as {
          type: string;
          clientNonce?: string;
        };
        if (msg.type === 'hello')
          ws.send(
            JSON.stringify({
              type: 'challenge',
              protocol: 1,
              nonce,
              agent: 'baton 0.0.9',
              maxPayload: 1024 * 1024,
            }),
          );
        else if (msg.type === 'auth')
          ws.send(
            JSON.stringify({ type: 'welcome', proof: agentProof(token, nonce, msg.clientNonce!) }),
          );
        else afterAuth.push(msg);
      });
    });
    await new Promise<void>((resolve) => server.once('listening', resolve));
  });
  after(async () => {
    for (const ws of server.clients) ws.terminate();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it('the client sends neither stage nor switch: PROTOCOL_MISMATCH, naming the version and what to do', async () => {
    const port = (server.address() as AddressInfo).port;
    const dialer = directDialer(`ws://127.0.0.1:${port}`);
    const client = await AgentClient.connect(dialer, token);
    assert.equal(client.protocol, 1);
    client.close();
    for (const plan of [
      {
        kind: 'stage',
        deployId: 'old-stage',
        app: 'web',
        manifest: { manifest: {} } as SignedManifest,
        archive: '/nonexistent',
        origin,
      },
      { kind: 'switch', deployId: 'old-switch', app: 'web', to: 'rel-b', origin },
    ] as const) {
      const err = await rejectsWith(
        () =>
          withDeadline(
            deployToHost(
              dialer,
              token,
              plan,
              { event: () => undefined, note: () => undefined },
              { reconnects: 0 },
            ),
            plan.kind,
          ),
        'PROTOCOL_MISMATCH',
      );
      assert.match(err.message, /speaks protocol 1/);
      assert.match(err.message, new RegExp(`${plan.kind} needs protocol 2`));
      assert.match(err.message, /upgrade the agent/);
    }
    assert.deepEqual(afterAuth, [], 'nothing was sent after the handshake');
  });
});
