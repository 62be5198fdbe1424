import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { SignedManifest } from '../../src/protocol/manifest.js';
import { toolVersion } from '../../src/artifact/release-id.js';
import { CloseCode, PROTOCOL_VERSION } from '../../src/protocol/channel.js';
import type { AgentStatus } from '../../src/protocol/results.js';
import { agentProof, clientMac, makeNonce } from '../../src/transport/auth.js';
import { AgentClient } from '../../src/transport/client.js';
import { directDialer } from '../../src/transport/dialer.js';
import { batonSync } from '../../support/baton-cli.js';
import { type ChannelAgent, startChannelAgent } from '../../support/channel-agent.js';
import { control } from '../../support/control.js';
import { waitUntil, withDeadline } from '../../support/deadline.js';
import { get } from '../../support/http-get.js';
import { type AuditLine, readAudit } from '../support/audit-log.js';
import { RawClient } from '../support/raw-client.js';

/*
 * The channel under hostile input, against a real agent over real sockets. Each case is named
 * after the attack it replays; after each, the app still answers and a good client still gets in.
 * Attacks that fail logins come from their own loopback address (127.0.0.N): failed logins are
 * limited per peer, and the good client comes from 127.0.0.1.
 */

/** hello → challenge; returns the agent's nonce. */
async function hello(c: RawClient): Promise<string> {
  c.send({ type: 'hello', protocols: [PROTOCOL_VERSION], client: 'hostile-test' });
  return (await c.next('challenge', 'challenge')).nonce;
}

/** The auth message for a nonce, under `token`. */
function authFor(token: string, agentNonce: string) {
  const clientNonce = makeNonce();
  return { type: 'auth', clientNonce, mac: clientMac(token, agentNonce, clientNonce) } as const;
}

/** The whole handshake, checking the agent's proof; returns the auth message it sent. */
async function authenticate(c: RawClient, token: string) {
  const nonce = await hello(c);
  const auth = authFor(token, nonce);
  c.send(auth);
  const welcome = await c.next('welcome', 'welcome');
  assert.equal(welcome.proof, agentProof(token, nonce, auth.clientNonce));
  return auth;
}

/** Expects the agent to say `code` and close with `closeCode`. */
async function refused(c: RawClient, code: string | undefined, closeCode: number, what: string) {
  const closed = await c.waitClosed(what);
  assert.equal(closed.code, closeCode, `${what}: close code (${closed.reason})`);
  if (code !== undefined)
    assert.deepEqual(
      c.errors().map((e) => e.code),
      [code],
      `${what}: ${JSON.stringify(c.received)}`,
    );
  assert.deepEqual(c.garbage, [], `${what}: only channel messages from the agent`);
  assert.ok(Buffer.byteLength(closed.reason) <= 123);
}

async function auditEntry(ch: ChannelAgent, pred: (a: AuditLine) => boolean, what: string) {
  await waitUntil(async () => (await readAudit(ch)).some(pred), `audit log: ${what}`);
  return (await readAudit(ch)).find(pred)!;
}

/**
 * After every attack: the agent process lives, the app answers 200 from its current release,
 * and a good client (the real one) authenticates both ways and gets a status reply.
 * `retryBusy` tolerates 1013 (pending cap) while refused connections finish closing.
 */
async function stillServes(ch: ChannelAgent, opts: { retryBusy?: boolean } = {}): Promise<void> {
  try {
    await serves(ch, opts);
  } catch (err) {
    // A dead agent explains any failure here: say so, with its last words, not the symptom.
    const exit = await withDeadline(ch.agent.exited, 'the agent to exit', 2000).then(
      (code) => ({ code }),
      () => undefined,
    );
    if (exit)
      throw new Error(`the agent exited (${exit.code}):\n${ch.agent.output.slice(-25).join('\n')}`);
    throw err;
  }
}

async function serves(ch: ChannelAgent, opts: { retryBusy?: boolean }): Promise<void> {
  const res = await withDeadline(get(ch.appPort), 'the app to answer');
  assert.equal(res.status, 200);
  assert.equal(res.body.split(' ')[0], (await ch.generation()).releaseId);
  const dialer = directDialer(`ws://127.0.0.1:${ch.channelPort}`);
  let client: AgentClient | undefined;
  await withDeadline(
    (async () => {
      for (;;) {
        try {
          client = await AgentClient.connect(dialer, ch.token);
          return;
        } catch (err) {
          if (!opts.retryBusy || !String((err as Error).message).includes('1013')) throw err;
          await new Promise((r) => setTimeout(r, 25));
        }
      }
    })(),
    'a good client to authenticate',
  );
  try {
    const status = (await withDeadline(
      client!.query({ type: 'status' }),
      'status reply',
    )) as AgentStatus;
    assert.deepEqual(
      status.apps.map((a) => a.name),
      ['web'],
    );
  } finally {
    client!.close();
  }
  assert.equal(ch.agent.proc.exitCode, null);
}

/** A packed, signed release of the `web` app: its manifest and archive bytes. */
async function pack(
  ch: ChannelAgent,
  id: string,
  opts: { hook?: string; files?: Record<string, Buffer> } = {},
): Promise<{ signed: SignedManifest; bytes: Buffer }> {
  const src = await ch.source(id, opts);
  const out = path.join(ch.dir, 'packed');
  const args = ['pack', src, '--app', 'web', '--out', out, '--key', ch.keyFile, '--release-id', id];
  const r = batonSync(args);
  assert.equal(r.status, 0, r.stderr);
  const signed = JSON.parse(
    await readFile(path.join(out, `${id}.manifest.json`), 'utf8'),
  ) as SignedManifest;
  // Test archives are a few hundred bytes: reading one whole is fine here.
  const bytes = await readFile(path.join(out, `${id}.tar.gz`));
  assert.equal(bytes.length, signed.manifest.archive.size);
  return { signed, bytes };
}

function deployRequest(deployId: string, signed: SignedManifest, actor = 'hostile-test') {
  return { type: 'deploy', deployId, app: 'web', manifest: signed, origin: { actor } } as const;
}

/** Sends artifact bytes in frames well under the 64 KiB maxPayload these agents use. */
function sendBytes(c: RawClient, bytes: Buffer): void {
  for (let at = 0; at < bytes.length; at += 16 * 1024) c.send(bytes.subarray(at, at + 16 * 1024));
}

/** A good client's view of a deploy, by id: its result, replayed from the start. */
async function outcomeOf(ch: ChannelAgent, deployId: string) {
  const c = await RawClient.open(ch.channelPort);
  try {
    await authenticate(c, ch.token);
    c.send({ type: 'attach', deployId, after: 0 });
    return (await c.next('result', `the result of ${deployId}`, (m) => m.deployId === deployId))
      .outcome;
  } finally {
    c.close();
  }
}

describe('channel under hostile input', () => {
  let ch: ChannelAgent;
  before(async () => {
    ch = await startChannelAgent({ authFailures: 3, authWindowMs: 60_000, maxPayload: 65_536 });
  });
  after(async () => {
    await ch?.cleanup();
  });

  /** One attack, then the check that nothing else suffered. */
  const attack = (name: string, fn: () => Promise<void>): void => {
    it(name, async () => {
      await fn();
      await stillServes(ch);
    });
  };

  attack('binary frame before auth: refused, closed 1008', async () => {
    const first = await RawClient.open(ch.channelPort);
    first.send(Buffer.from('not an artifact'));
    await refused(first, 'PROTOCOL_VIOLATION', CloseCode.policy, 'binary before hello');

    const afterHello = await RawClient.open(ch.channelPort);
    await hello(afterHello);
    afterHello.send(Buffer.alloc(1024, 7));
    await refused(afterHello, 'PROTOCOL_VIOLATION', CloseCode.policy, 'binary before auth');
  });

  attack('JSON that is not a known message: PROTOCOL_VIOLATION, closed 1008', async () => {
    const frames = [
      'hello agent',
      '{"type":"hello","protocols":[1],"client":"x"',
      'null',
      '[]',
      '"hello"',
      '42',
      '{}',
      '{"type":"sudo","cmd":"rm -rf /"}',
      '{"type":"hello"}',
      '{"type":"hello","protocols":"1","client":"x"}',
      '{"type":"hello","protocols":[1],"client":"x","admin":true}',
      '{"type":"hello","protocols":[1.5],"client":"x"}',
      '{"type":"__proto__","protocols":[1],"client":"x"}',
      '{"__proto__":{"type":"hello"},"protocols":[1],"client":"x"}',
    ];
    for (const frame of frames) {
      const c = await RawClient.open(ch.channelPort);
      c.send(frame);
      await refused(c, 'PROTOCOL_VIOLATION', CloseCode.policy, frame);
    }
    // Authenticated does not mean trusted with garbage.
    const authed = await RawClient.open(ch.channelPort);
    await authenticate(authed, ch.token);
    authed.send('{"type":"sudo"}');
    await refused(authed, 'PROTOCOL_VIOLATION', CloseCode.policy, 'unknown type after auth');
  });

  attack(
    'non-ASCII field name quoted past the 123-byte close reason: refused, the agent lives',
    async () => {
      for (const key of ['é'.repeat(200), '🦀'.repeat(100), `a${'ж'.repeat(70)}`]) {
        const c = await RawClient.open(ch.channelPort);
        c.send({ type: 'hello', protocols: [PROTOCOL_VERSION], client: 'x', [key]: 1 });
        await refused(c, 'PROTOCOL_VIOLATION', CloseCode.policy, `unknown field ${key}`);
      }
    },
  );

  attack('text frame that is not UTF-8: closed 1007', async () => {
    const c = await RawClient.open(ch.channelPort);
    c.sendFrame(Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0xc3, 0x28, 0x22, 0x7d]), false);
    await refused(c, undefined, 1007, 'invalid UTF-8');
  });

  attack('auth with a wrong token: AUTH_FAILED, closed 4001, audited', async () => {
    const peer = '127.0.0.2';
    const c = await RawClient.open(ch.channelPort, peer);
    const nonce = await hello(c);
    c.send(authFor(`${ch.token}x`, nonce));
    await refused(c, 'AUTH_FAILED', CloseCode.authFailed, 'wrong token');
    assert.ok(!c.received.some((m) => m.type === 'welcome'));
    await auditEntry(ch, (a) => a.event === 'auth-failed' && a.peer === peer, 'auth-failed');
  });

  attack(
    'token guessing past authFailures: wrong ones refused (AUTH_RATE_LIMITED, 4002), audited; the right token still gets in',
    async () => {
      const peer = '127.0.0.3';
      for (let i = 0; i < 3; i++) {
        const c = await RawClient.open(ch.channelPort, peer);
        c.send(authFor(makeNonce(), await hello(c)));
        await refused(c, 'AUTH_FAILED', CloseCode.authFailed, `guess ${i + 1}`);
      }
      const fourth = await RawClient.open(ch.channelPort, peer);
      fourth.send(authFor(makeNonce(), await hello(fourth)));
      await refused(fourth, 'AUTH_RATE_LIMITED', CloseCode.rateLimited, 'the fourth guess');
      await auditEntry(
        ch,
        (a) => a.event === 'auth-rate-limited' && a.peer === peer,
        'auth-rate-limited',
      );
      assert.equal(
        (await readAudit(ch)).filter((a) => a.event === 'auth-failed' && a.peer === peer).length,
        3,
      );
      // Behind SSH every client shares one address: others' guesses never lock out the token.
      const right = await RawClient.open(ch.channelPort, peer);
      await authenticate(right, ch.token);
      right.close();
    },
  );

  attack('auth guesses pipelined behind a refused one: not read, not counted', async () => {
    const peer = '127.0.0.4';
    const c = await RawClient.open(ch.channelPort, peer);
    const nonce = await hello(c);
    // All in one burst: they reach the agent before it has finished closing the connection.
    for (let i = 0; i < 4; i++) c.send(authFor(makeNonce(), nonce));
    c.send(authFor(ch.token, nonce));
    c.send({ type: 'status', requestId: 'pipelined' });
    await refused(c, 'AUTH_FAILED', CloseCode.authFailed, 'pipelined guesses');
    assert.deepEqual(
      c.received.map((m) => m.type),
      ['challenge', 'error'],
    );
    // Had the guesses counted, this peer would now be over its 3 failures and refused.
    const next = await RawClient.open(ch.channelPort, peer);
    await authenticate(next, ch.token);
    next.close();
    await auditEntry(ch, (a) => a.event === 'connected' && a.peer === peer, 'connected');
    assert.deepEqual(
      (await readAudit(ch)).filter((a) => a.peer === peer).map((a) => a.event),
      ['auth-failed', 'connected'],
    );
  });

  attack('replayed auth from a captured session: AUTH_FAILED (the nonce is fresh)', async () => {
    const peer = '127.0.0.5';
    // A good session, listened to: its auth message is captured whole.
    const victim = await RawClient.open(ch.channelPort, peer);
    const captured = await authenticate(victim, ch.token);
    const victimChallenge = await victim.next('challenge', 'the victim challenge');
    victim.close();

    const replay = await RawClient.open(ch.channelPort, peer);
    assert.notEqual(await hello(replay), victimChallenge.nonce);
    replay.send(captured);
    await refused(replay, 'AUTH_FAILED', CloseCode.authFailed, 'replayed auth');
    assert.ok(!replay.received.some((m) => m.type === 'welcome'));
  });

  attack('frames over maxPayload (64 KiB): closed 1009, the agent serves on', async () => {
    const early = await RawClient.open(ch.channelPort);
    early.send(`"${'a'.repeat(65_536)}"`);
    await refused(early, undefined, CloseCode.tooBig, 'a text frame over maxPayload');

    const authed = await RawClient.open(ch.channelPort);
    await authenticate(authed, ch.token);
    authed.send(Buffer.alloc(4 * 1024 * 1024, 1));
    await refused(authed, undefined, CloseCode.tooBig, 'a 4 MiB binary frame');
  });

  attack(
    'hello from a future protocol: PROTOCOL_MISMATCH naming both versions, closed 4000',
    async () => {
      const c = await RawClient.open(ch.channelPort);
      c.send({ type: 'hello', protocols: [99], client: 'from-the-future' });
      await refused(c, 'PROTOCOL_MISMATCH', CloseCode.protocolMismatch, 'protocol 99');
      // The agent's own version string aside, both protocol numbers are named.
      const message = c.errors()[0]!.message.replaceAll(toolVersion(), '');
      assert.match(message, /\b99\b/);
      assert.match(message, new RegExp(`\\b${PROTOCOL_VERSION}\\b`));
    },
  );

  attack('requests before auth: refused, closed 1008, nothing runs', async () => {
    const { signed } = await pack(ch, 'preauth');
    const before = await ch.generation();
    const origin = { actor: 'mallory' };
    const requests = [
      deployRequest('preauth-1', signed, 'mallory'),
      { type: 'rollback', deployId: 'preauth-2', app: 'web', origin },
      { type: 'attach', deployId: 'preauth-3', after: 0 },
      { type: 'status', requestId: 'preauth-4' },
      { type: 'releases', requestId: 'preauth-5', app: 'web' },
    ];
    for (const req of requests) {
      for (const sayHello of [false, true]) {
        const c = await RawClient.open(ch.channelPort);
        if (sayHello) await hello(c);
        c.send(req);
        const what = `${req.type} ${sayHello ? 'after hello' : 'first'}`;
        await refused(c, 'PROTOCOL_VIOLATION', CloseCode.policy, what);
        assert.ok(
          !c.received.some((m) => m.type === 'accepted' || m.type === 'reply'),
          `${what}: ${JSON.stringify(c.received)}`,
        );
      }
    }
    assert.ok(!(await readAudit(ch)).some((a) => a.deployId?.startsWith('preauth-')));
    assert.deepEqual(await ch.generation(), before);
  });

  attack('artifact bytes nobody asked for, after auth: closed 1008', async () => {
    const c = await RawClient.open(ch.channelPort);
    await authenticate(c, ch.token);
    c.send(Buffer.from('\x1f\x8b not asked for'));
    await refused(c, 'PROTOCOL_VIOLATION', CloseCode.policy, 'unrequested bytes');
  });

  attack(
    'more artifact bytes than announced: closed, the deploy fails, the old release serves',
    async () => {
      const { signed, bytes } = await pack(ch, 'overflow');
      const before = await ch.generation();
      const c = await RawClient.open(ch.channelPort);
      await authenticate(c, ch.token);
      c.send(deployRequest('overflow-1', signed));
      await c.next('accepted', 'accepted');
      const upload = await c.next('upload', 'the upload request');
      assert.equal(upload.bytes, bytes.length);
      // All but the last byte, then the last one with one more behind it in the same frame.
      c.send(bytes.subarray(0, bytes.length - 1));
      c.send(Buffer.concat([bytes.subarray(bytes.length - 1), Buffer.from([0])]));
      await refused(c, 'PROTOCOL_VIOLATION', CloseCode.policy, 'one byte too many');
      const outcome = await outcomeOf(ch, 'overflow-1');
      assert.equal(outcome.ok, false);
      assert.equal(outcome.error?.code, 'PROTOCOL_VIOLATION', JSON.stringify(outcome.error));
      assert.deepEqual(await ch.generation(), before);
      const releases = (await control(ch.agent.socket, { method: 'releases', app: 'web' }))
        .result as { id: string }[];
      assert.ok(!releases.some((r) => r.id === 'overflow'));
    },
  );

  attack('a deploy id reused for another artifact: PROTOCOL_VIOLATION', async () => {
    const a = await pack(ch, 'reuse-a');
    const b = await pack(ch, 'reuse-b');
    const first = await RawClient.open(ch.channelPort);
    await authenticate(first, ch.token);
    first.send(deployRequest('reused-1', a.signed));
    await first.next('upload', 'the upload request');

    const second = await RawClient.open(ch.channelPort);
    await authenticate(second, ch.token);
    second.send(deployRequest('reused-1', b.signed));
    const running = await second.next('error', 'refusal while the first runs');
    assert.equal(running.code, 'PROTOCOL_VIOLATION');
    assert.equal(running.deployId, 'reused-1');

    // The first leaves mid-upload; its deploy ends, and the id still names that artifact.
    first.close();
    await auditEntry(
      ch,
      (x) => x.event === 'deploy-finished' && x.deployId === 'reused-1',
      'the first deploy ends',
    );
    second.send(deployRequest('reused-1', b.signed));
    const ended = await second.next('error', 'refusal after it ended', (m) => m !== running);
    assert.equal(ended.code, 'PROTOCOL_VIOLATION');
    // An error about one request, not the end of the connection.
    second.send({ type: 'status', requestId: 'still-here' });
    await second.next('reply', 'status on the same connection');
    assert.equal(second.closedWith, undefined);
    second.close();
  });

  attack(
    'two deploys of one app at once: the second gets DEPLOY_BUSY naming the first and its actor',
    async () => {
      const gate = path.join(ch.dir, 'busy-gate');
      // Bounded: the hook gives up after 30 s even if the test never opens the gate.
      const hook = `i=0; while [ ! -e ${gate} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done`;
      const held = await pack(ch, 'busy-a', { hook });
      const other = await pack(ch, 'busy-b');
      const alice = await RawClient.open(ch.channelPort);
      await authenticate(alice, ch.token);
      alice.send(deployRequest('busy-first', held.signed, 'alice'));
      await alice.next('upload', 'the upload request');
      sendBytes(alice, held.bytes);
      await ch.agent.waitFor(
        (r) => r.type === 'phase' && r.phase === 'hook-started' && r.releaseId === 'busy-a',
        'the first deploy is in its hook',
      );

      const mallory = await RawClient.open(ch.channelPort);
      await authenticate(mallory, ch.token);
      mallory.send(deployRequest('busy-second', other.signed, 'mallory'));
      const busy = await mallory.next('error', 'DEPLOY_BUSY');
      assert.equal(busy.code, 'DEPLOY_BUSY');
      assert.equal(busy.deployId, 'busy-second');
      assert.ok(busy.message.includes('busy-first'), busy.message);
      assert.ok(busy.message.includes('alice'), busy.message);
      assert.ok(!mallory.received.some((m) => m.type === 'accepted' || m.type === 'upload'));
      mallory.close();
      // Meanwhile the old release serves.
      assert.equal((await get(ch.appPort)).status, 200);

      await writeFile(gate, 'go');
      const result = await alice.next('result', 'the first deploy ends');
      assert.equal(result.outcome.ok, true, JSON.stringify(result.outcome.error));
      assert.equal(result.outcome.releaseId, 'busy-a');
      alice.close();
      assert.equal((await ch.generation()).releaseId, 'busy-a');
    },
  );
});

describe('channel under hostile input: a client that never authenticates', () => {
  let ch: ChannelAgent;
  before(async () => {
    ch = await startChannelAgent({ authTimeoutMs: 500 });
  });
  after(async () => {
    await ch?.cleanup();
  });

  it('silent, or stopping after hello: dropped after authTimeoutMs', async () => {
    const silent = await RawClient.open(ch.channelPort);
    await refused(silent, 'AUTH_TIMEOUT', CloseCode.policy, 'a silent client');

    const stalled = await RawClient.open(ch.channelPort);
    await hello(stalled);
    await refused(stalled, 'AUTH_TIMEOUT', CloseCode.policy, 'a client stopped after hello');
    await stillServes(ch);
  });
});

describe('channel under hostile input: connections piling up unauthenticated', () => {
  let ch: ChannelAgent;
  before(async () => {
    ch = await startChannelAgent({ maxPendingConnections: 4, maxPayload: 65_536 });
  });
  after(async () => {
    await ch?.cleanup();
  });

  it('past maxPendingConnections: the oldest pending one is closed 1013, the newcomer gets in, authenticated ones unaffected', async () => {
    const authed = await RawClient.open(ch.channelPort);
    await authenticate(authed, ch.token);
    const pending: RawClient[] = [];
    for (let i = 0; i < 4; i++) {
      const c = await RawClient.open(ch.channelPort);
      await hello(c);
      pending.push(c);
    }
    // Idle sockets that hold every slot do not keep a real client out: the oldest makes room.
    const extra = await RawClient.open(ch.channelPort);
    await refused(pending.shift()!, undefined, 1013, 'the oldest pending connection');
    await authenticate(extra, ch.token);
    extra.close();

    // Newcomers that send bad frames at once (each closing an older pending one to get in):
    // each ends only itself, never the agent.
    const hostile = await RawClient.open(ch.channelPort, '127.0.0.1', {
      first: [{ data: Buffer.alloc(70_000), binary: true }],
    });
    const notUtf8 = await RawClient.open(ch.channelPort, '127.0.0.1', {
      first: [{ data: Buffer.from([0xff, 0xff]), binary: false }],
    });
    await notUtf8.waitClosed('a connection sending text that is not UTF-8');
    await hostile.waitClosed('a connection sending bad frames');

    // The authenticated connection does not count, and still works.
    authed.send({ type: 'status', requestId: 'while-full' });
    await authed.next('reply', 'status while the pending slots are full');
    authed.close();

    for (const c of pending) {
      c.close();
      await c.waitClosed('a held connection to close');
    }
    await stillServes(ch, { retryBusy: true });
  });
});

describe('channel under hostile input: an artifact over the size limit', () => {
  let ch: ChannelAgent;
  before(async () => {
    // Smaller than any packed test release.
    ch = await startChannelAgent({ maxPayload: 65_536 }, { maxArchiveBytes: 100 });
  });
  after(async () => {
    await ch?.cleanup();
  });

  it('announced over maxArchiveBytes: ARCHIVE_TOO_LARGE; bytes sent anyway are refused, and the client leaving does not end the agent', async () => {
    const { signed, bytes } = await pack(ch, 'too-big');
    assert.ok(bytes.length > 100);
    // Refused after the agent asked for the bytes; the client simply leaves.
    const leaver = await RawClient.open(ch.channelPort);
    await authenticate(leaver, ch.token);
    leaver.send(deployRequest('too-big-1', signed));
    const result = await leaver.next('result', 'the refusal');
    assert.equal(result.outcome.ok, false);
    assert.equal(result.outcome.error?.code, 'ARCHIVE_TOO_LARGE');
    leaver.close();
    await leaver.waitClosed('the client to leave');
    await stillServes(ch);

    // The same refusal, and the client sends the bytes anyway: the deploy is over, they are
    // no longer wanted, whatever the agent asked before.
    const pushy = await RawClient.open(ch.channelPort);
    await authenticate(pushy, ch.token);
    pushy.send(deployRequest('too-big-2', signed));
    await pushy.next('result', 'the refusal');
    pushy.send(bytes);
    await refused(pushy, 'PROTOCOL_VIOLATION', CloseCode.policy, 'bytes after the end');
    await stillServes(ch);
  });
});

describe('a stalled upload', () => {
  let ch: ChannelAgent;
  before(async () => {
    ch = await startChannelAgent({ maxPayload: 65_536, uploadIdleMs: 500 });
  });
  after(async () => {
    await ch?.cleanup();
  });

  it('a client that stops sending (while answering pings) loses the upload, and the app is free again', async () => {
    const { signed, bytes } = await pack(ch, 'stall', {
      files: { 'blob.bin': randomBytes(256 * 1024) },
    });
    const before = await ch.generation();
    const staller = await RawClient.open(ch.channelPort);
    await authenticate(staller, ch.token);
    staller.send(deployRequest('stall-1', signed));
    await staller.next('upload', 'the agent asks for the bytes');
    sendBytes(staller, bytes.subarray(0, 32 * 1024));
    await refused(staller, 'UPLOAD_INCOMPLETE', CloseCode.policy, 'a stalled upload');
    const outcome = await outcomeOf(ch, 'stall-1');
    assert.equal(outcome.error?.code, 'UPLOAD_INCOMPLETE');
    assert.deepEqual(await ch.generation(), before);
    // Nothing changed, so the same deploy id may run again, now whole.
    const retry = await RawClient.open(ch.channelPort);
    try {
      await authenticate(retry, ch.token);
      retry.send(deployRequest('stall-1', signed));
      await retry.next('upload', 'asked again');
      sendBytes(retry, bytes);
      const result = await retry.next('result', 'the retried deploy');
      assert.equal(result.outcome.ok, true, JSON.stringify(result.outcome.error));
    } finally {
      retry.close();
    }
    await stillServes(ch);
  });
});
