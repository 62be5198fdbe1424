import assert from 'node:assert/strict';
import { chmod, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { BatonError } from '../../src/errors.js';
import { buildManifest } from '../../src/artifact/release-id.js';
import { generateKeyPair, signManifest } from '../../src/artifact/sign.js';
import {
  ClientMessageSchema,
  DeployOutcomeSchema,
  PROTOCOL_SINCE,
  PROTOCOL_VERSION,
  ServerMessageSchema,
  StageRequestSchema,
  SUPPORTED_PROTOCOLS,
  SwitchRequestSchema,
} from '../../src/protocol/channel.js';
import {
  agentProof,
  checkToken,
  clientMac,
  FailureLimiter,
  macEquals,
  makeNonce,
  makeToken,
  readTokenFile,
} from '../../src/transport/auth.js';
import { connectionCap, softFileLimit } from '../../src/transport/connection-gate.js';
import { ChannelConfigSchema } from '../../src/protocol/channel-config.js';
import {
  DeploySession,
  SessionRegistry,
  type SessionMessage,
} from '../../src/transport/deploy-session.js';
import { rejectsWith } from '../support/artifact-support.js';
import { tempDir } from '../../support/temp-dir.js';

const origin = { actor: 'ci' };
const info = (id: string, app = 'web') => ({
  deployId: id,
  kind: 'deploy' as const,
  app,
  origin,
  subject: 'abc',
});

describe('channel auth', () => {
  it('client and agent MACs differ, bind both nonces, and compare in constant time', () => {
    const token = makeToken();
    const [a, c] = [makeNonce(), makeNonce()];
    const mac = clientMac(token, a, c);
    assert.ok(macEquals(mac, clientMac(token, a, c)));
    assert.ok(!macEquals(mac, agentProof(token, a, c)), 'a client MAC is no agent proof');
    assert.ok(!macEquals(mac, clientMac(token, makeNonce(), c)), 'another agent nonce');
    assert.ok(!macEquals(mac, clientMac(token, a, makeNonce())), 'another client nonce');
    assert.ok(!macEquals(mac, clientMac(makeToken(), a, c)), 'another token');
    assert.ok(!macEquals(mac, mac.slice(0, 10)));
    assert.ok(!macEquals('', ''));
  });

  it('refuses short or multi-line tokens, and a token file others can read', async () => {
    assert.throws(() => checkToken('short', 'x'), { code: 'TOKEN_INVALID' });
    assert.throws(() => checkToken(`${'a'.repeat(20)}\n${'b'.repeat(20)}`, 'x'), {
      code: 'TOKEN_INVALID',
    });
    const tmp = await tempDir();
    try {
      const file = path.join(tmp.dir, 'token');
      await writeFile(file, makeToken() + '\n', { mode: 0o600 });
      assert.equal((await readTokenFile(file, { private: true })).length, 43);
      await chmod(file, 0o644);
      await rejectsWith(() => readTokenFile(file, { private: true }), 'TOKEN_INVALID');
      // A client's copy may be as the user keeps it.
      assert.ok(await readTokenFile(file, { private: false }));
    } finally {
      await tmp.cleanup();
    }
  });

  it('rate-limits failures per peer within the window, then lets it try again', () => {
    let now = 1_000_000;
    const limiter = new FailureLimiter(3, 60_000, () => now);
    for (let i = 0; i < 3; i++) {
      assert.equal(limiter.blockedFor('a'), 0);
      limiter.fail('a');
    }
    assert.ok(limiter.blockedFor('a') > 0);
    assert.equal(limiter.blockedFor('b'), 0, 'other peers are not blocked');
    now += 60_001;
    assert.equal(limiter.blockedFor('a'), 0);
    // Peers seen once and never again do not pile up.
    for (let i = 0; i < 5000; i++) {
      limiter.fail(`p${i}`);
      now += 60;
    }
    assert.ok(limiter.size <= 1001, `${limiter.size} peers kept`);
  });
});

describe('channel config', () => {
  it('listens on the socket only by default, and refuses another TCP address without TLS', () => {
    const ok = ChannelConfigSchema.parse({ tokenFile: '/t' });
    assert.equal(ok.socket, '/run/baton/channel.sock');
    assert.equal(ok.port, undefined);
    assert.equal(ok.host, '127.0.0.1');
    assert.ok(ChannelConfigSchema.safeParse({ tokenFile: '/t', port: 7701 }).success);
    assert.ok(
      !ChannelConfigSchema.safeParse({ tokenFile: '/t', host: '0.0.0.0', port: 7701 }).success,
    );
    assert.ok(
      ChannelConfigSchema.safeParse({
        tokenFile: '/t',
        host: '0.0.0.0',
        port: 7701,
        tls: { cert: 'c', key: 'k' },
      }).success,
    );
    assert.ok(!ChannelConfigSchema.safeParse({ tokenFile: '/t', maxPayload: 10 }).success);
    assert.ok(!ChannelConfigSchema.safeParse({ tokenFile: '/t', extra: 1 }).success);
  });

  it('keeps a quarter of the file limit (at least 256 fds) out of the channel’s reach', () => {
    assert.equal(
      softFileLimit('Max open files            1024                 4096                 files\n'),
      1024,
    );
    assert.equal(connectionCap(256, 1024), 256);
    assert.equal(connectionCap(1000, 1024), 768);
    assert.equal(connectionCap(100_000, 40_000), 30_000);
    assert.equal(connectionCap(256, 512), 256);
    assert.equal(connectionCap(256, 300), 150);
    assert.equal(connectionCap(256, undefined), 256);
  });
});

describe('wire schemas', () => {
  it('are strict: unknown fields and types are refused', () => {
    assert.ok(ClientMessageSchema.safeParse({ type: 'status', requestId: 'q' }).success);
    assert.ok(!ClientMessageSchema.safeParse({ type: 'status', requestId: 'q', x: 1 }).success);
    assert.ok(!ClientMessageSchema.safeParse({ type: 'nope' }).success);
    assert.ok(
      !ClientMessageSchema.safeParse({ type: 'attach', deployId: '../x', after: 0 }).success,
    );
    assert.ok(!ServerMessageSchema.safeParse({ type: 'welcome', proof: 'zz' }).success);
  });

  it('stage carries a deploy’s fields, switch a release id; both strict, both protocol 2', () => {
    const manifest = buildManifest({
      app: 'web',
      releaseId: 'rel-b',
      archive: { sha256: 'a'.repeat(64), size: 10, entries: 1 },
      now: new Date('2026-11-24T15:30:00Z'),
    });
    const signed = signManifest(manifest, generateKeyPair().privateKeyPem);
    const stage = { type: 'stage', deployId: 's-1', app: 'web', manifest: signed, origin };
    assert.ok(StageRequestSchema.safeParse(stage).success);
    assert.ok(ClientMessageSchema.safeParse(stage).success);
    assert.ok(!ClientMessageSchema.safeParse({ ...stage, to: 'rel-b' }).success);
    assert.ok(!ClientMessageSchema.safeParse({ ...stage, manifest: undefined }).success);
    const sw = { type: 'switch', deployId: 'w-1', app: 'web', to: 'rel-b', origin };
    assert.ok(SwitchRequestSchema.safeParse(sw).success);
    assert.ok(ClientMessageSchema.safeParse(sw).success);
    // No "previous" switch, and no force: a switch names the release it goes to.
    assert.ok(!ClientMessageSchema.safeParse({ ...sw, to: undefined }).success);
    assert.ok(!ClientMessageSchema.safeParse({ ...sw, force: true }).success);
    assert.ok(!ClientMessageSchema.safeParse({ ...sw, to: '../etc' }).success);
    assert.ok(!ClientMessageSchema.safeParse({ ...sw, manifest: signed }).success);

    assert.equal(PROTOCOL_VERSION, 2);
    assert.deepEqual(SUPPORTED_PROTOCOLS, [1, 2]);
    assert.deepEqual(PROTOCOL_SINCE, { stage: 2, switch: 2 });
  });

  it('outcomes may be of kind stage and switch; a stage names no generation', () => {
    const outcome = {
      deployId: 's-1',
      kind: 'stage',
      app: 'web',
      ok: true,
      releaseId: 'rel-b',
      uploadedBytes: 10,
      phases: { received: 1, verified: 1, unpacked: 1 },
      totalMs: 3,
      startedAt: '2026-11-24T15:30:00.000Z',
      finishedAt: '2026-11-24T15:30:00.003Z',
    };
    assert.ok(DeployOutcomeSchema.safeParse(outcome).success);
    assert.ok(DeployOutcomeSchema.safeParse({ ...outcome, kind: 'switch' }).success);
    assert.ok(!DeployOutcomeSchema.safeParse({ ...outcome, kind: 'upgrade' }).success);
  });
});

describe('deploy sessions', () => {
  it('number events, replay those after a given one, then end with one result', async () => {
    const s = new DeploySession(info('d1'));
    const at = new Date().toISOString();
    s.emit({ type: 'phase', at, app: 'web', phase: 'received' });
    s.emit({ type: 'phase', at, app: 'web', phase: 'verified' });
    const seen: number[] = [];
    s.attach(1, (m) => seen.push(m.seq));
    assert.deepEqual(seen, [2]);
    s.emit({ type: 'log', at, app: 'web', source: 'gen-2', line: 'hi' });
    const outcome = s.finish({ releaseId: 'v1', uploadedBytes: 10 });
    s.finish({ error: new Error('late'), uploadedBytes: 0 });
    assert.deepEqual(seen, [2, 3, 4]);
    assert.equal(outcome.ok, true);
    assert.equal((await s.done).releaseId, 'v1');
    assert.ok('received' in outcome.phases && 'verified' in outcome.phases);
  });

  it('one running per app: a second gets DEPLOY_BUSY naming the first and its actor', async () => {
    const reg = new SessionRegistry(2);
    const first = reg.begin(info('d1'));
    assert.throws(
      () => reg.begin(info('d2')),
      (err: Error & { code: string }) => {
        assert.equal(err.code, 'DEPLOY_BUSY');
        assert.match(err.message, /d1 by ci/);
        return true;
      },
    );
    reg.begin(info('other-app', 'api')).finish({ uploadedBytes: 0 });
    first.finish({ uploadedBytes: 0 });
    await first.done;
    await new Promise((r) => setImmediate(r));
    reg.begin(info('d3')).finish({ uploadedBytes: 0 });
    await new Promise((r) => setImmediate(r));
    assert.equal(reg.get('d1'), undefined, 'the oldest finished one is forgotten past keep');
    assert.ok(reg.get('d3'));
  });

  it('a deploy whose upload was cut may run again under its id', () => {
    const s = new DeploySession(info('d1'));
    const err = Object.assign(new Error('cut'), { code: 'UPLOAD_INCOMPLETE' });
    s.finish({ error: err, uploadedBytes: 0 });
    assert.equal(s.retryable, true);
    assert.ok(s.sameAs(info('d1')));
    assert.ok(!s.sameAs({ ...info('d1'), subject: 'other' }));
  });

  it('a stage or switch holds its app as a deploy does; the same id of another kind is not the same', () => {
    const reg = new SessionRegistry(10);
    const stage = reg.begin({ ...info('s1'), kind: 'stage' });
    assert.throws(() => reg.begin({ ...info('w1'), kind: 'switch', subject: 'rel-b' }), {
      code: 'DEPLOY_BUSY',
      message: /busy: stage s1 by ci/,
    });
    assert.ok(stage.sameAs({ ...info('s1'), kind: 'stage' }));
    assert.ok(!stage.sameAs(info('s1')), 'a deploy of the same digest is not that stage');
    const outcome = stage.finish({ releaseId: 'rel-b', uploadedBytes: 0 });
    assert.equal(outcome.kind, 'stage');
    assert.equal(outcome.generation, undefined);
  });
});

describe('deploy sessions: what they keep', () => {
  const at = () => new Date().toISOString();
  const replay = (s: DeploySession) => {
    const msgs: SessionMessage[] = [];
    s.attach(0, (m) => msgs.push(m));
    return msgs;
  };
  const kinds = (msgs: SessionMessage[]) =>
    msgs.map((m) => (m.type === 'result' ? 'result' : m.event.type));

  it('a finished session keeps its phases and result, not its log lines and progress', () => {
    const s = new DeploySession(info('d1'));
    const live: SessionMessage[] = [];
    s.attach(0, (m) => live.push(m));
    s.emit({ type: 'phase', at: at(), app: 'web', phase: 'received' });
    s.emit({ type: 'progress', at: at(), app: 'web', bytes: 10, total: 20 });
    s.emit({ type: 'log', at: at(), app: 'web', source: 'gen-2', line: 'starting' });
    s.emit({ type: 'phase', at: at(), app: 'web', phase: 'switched' });
    assert.deepEqual(kinds(replay(s)), ['phase', 'progress', 'log', 'phase'], 'kept while running');
    s.finish({ releaseId: 'v1', uploadedBytes: 20 });
    assert.deepEqual(kinds(live), ['phase', 'progress', 'log', 'phase', 'result']);
    const kept = replay(s);
    assert.deepEqual(kinds(kept), ['phase', 'phase', 'result']);
    assert.deepEqual(
      kept.map((m) => m.seq),
      [1, 4, 5],
      'numbers unchanged',
    );
  });

  it('log flood while running: past 1 MiB its lines are passed on live but not kept; phases always are', () => {
    const s = new DeploySession(info('d1'));
    let live = 0;
    s.attach(0, () => live++);
    const line = 'x'.repeat(1000);
    for (let i = 0; i < 4000; i++)
      s.emit({ type: 'log', at: at(), app: 'web', source: 'gen-2', line });
    s.emit({ type: 'phase', at: at(), app: 'web', phase: 'ready' });
    assert.equal(live, 4001);
    const kept = replay(s);
    const logs = kept.filter((m) => m.type === 'event' && m.event.type === 'log');
    const bytes = logs.reduce(
      (n, m) => n + (m.type === 'event' && m.event.type === 'log' ? m.event.line.length : 0),
      0,
    );
    assert.ok(logs.length > 0, 'the first lines are kept');
    assert.ok(bytes <= 1024 * 1024, `kept ${bytes} bytes of log lines`);
    assert.equal(kinds(kept).at(-1), 'phase', 'the phase after the flood is kept');
  });

  it('a wall clock stepped back gives durations of 0, never negative ones the client would refuse', () => {
    let now = Date.parse('2030-01-01T00:00:10Z');
    const s = new DeploySession(info('d1'), () => now);
    s.emit({ type: 'phase', at: '2030-01-01T00:00:11Z', app: 'web', phase: 'received' });
    // NTP steps the clock back by a minute.
    s.emit({ type: 'phase', at: '2030-01-01T00:00:05Z', app: 'web', phase: 'verified' });
    now -= 60_000;
    const outcome = s.finish({ releaseId: 'v1', uploadedBytes: 0 });
    assert.equal(outcome.totalMs, 0);
    assert.equal(outcome.phases.received, 1000);
    assert.equal(outcome.phases.verified, 0);
    assert.ok(DeployOutcomeSchema.safeParse(outcome).success);
  });

  it('a deploy refused as busy changed nothing: it may run again under its id', () => {
    const s = new DeploySession(info('d1'));
    s.finish({ error: new BatonError('DEPLOY_BUSY', 'busy'), uploadedBytes: 0 });
    assert.equal(s.retryable, true);
    const failed = new DeploySession(info('d2'));
    failed.finish({ error: new BatonError('GENERATION_EXITED', 'exit 1'), uploadedBytes: 10 });
    assert.equal(failed.retryable, false, 'a deploy that ran and failed is its own result');
  });

  it('a closed registry starts no session (an agent upgrade) and says why; running ones go on', async () => {
    const reg = new SessionRegistry(10);
    const running = reg.begin(info('d1'));
    reg.closed = 'the agent is being upgraded; try again in a moment';
    assert.throws(
      () => reg.begin(info('d2', 'api')),
      (err: Error & { code: string }) => {
        assert.equal(err.code, 'DEPLOY_BUSY');
        assert.match(err.message, /upgraded/);
        return true;
      },
    );
    assert.equal(reg.get('d2'), undefined);
    assert.equal(reg.active('web'), running);
    running.finish({ uploadedBytes: 0 });
    await running.done;
    reg.closed = undefined;
    assert.ok(reg.begin(info('d2', 'api')));
  });
});
