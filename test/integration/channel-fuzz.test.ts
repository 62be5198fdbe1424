import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { SignedManifest } from '../../src/protocol/manifest.js';
import { deployToHost } from '../../src/deploy/host-deploy.js';
import type { AgentStatus } from '../../src/protocol/results.js';
import { AgentClient } from '../../src/transport/client.js';
import { directDialer } from '../../src/transport/dialer.js';
import { batonSync } from '../../support/baton-cli.js';
import { type ChannelAgent, startChannelAgent } from '../../support/channel-agent.js';
import { withDeadline } from '../../support/deadline.js';
import { get } from '../../support/http-get.js';
import { startLoad } from '../../support/load-client.js';
import {
  SEED,
  MAX_MESSAGES,
  TIME_BUDGET_MS,
  WORKERS,
  MAX_PAYLOAD,
} from '../support/channel-fuzz-settings.js';
import { Tally, Fixture, fuzzConnection } from '../support/fuzz-connection.js';

/*
 * Thousands of random and mutated messages against a live agent, over many connections, before
 * and after auth. A model of the protocol predicts what each one must get (a reply, an error
 * and a close, a close code) and every prediction is checked within a bounded wait: a message
 * that gets nothing is a hang. The app serves under load throughout; at the end a good client
 * gets in, and the agent still deploys. Seeded: BATON_FUZZ_SEED=<seed> replays a run. Each
 * connection draws from its own generator, so its frames repeat whatever the interleaving, up to
 * what other connections did meanwhile (an app busy with another's deploy, say).
 */

describe('channel fuzz: random and mutated messages against a live agent', () => {
  let ch: ChannelAgent;
  let signed: SignedManifest;
  let archive: string;
  before(async () => {
    // Failed logins are expected by the hundred here: limiting them is the hostile-input test's.
    ch = await startChannelAgent({
      authFailures: 1000,
      authWindowMs: 1000,
      maxPayload: MAX_PAYLOAD,
    });
    const src = await ch.source('fuzz1');
    const out = path.join(ch.dir, 'packed');
    const r = batonSync([
      'pack',
      src,
      '--app',
      'web',
      '--out',
      out,
      '--key',
      ch.keyFile,
      '--release-id',
      'fuzz1',
    ]);
    assert.equal(r.status, 0, r.stderr);
    signed = JSON.parse(
      await readFile(path.join(out, 'fuzz1.manifest.json'), 'utf8'),
    ) as SignedManifest;
    archive = path.join(out, 'fuzz1.tar.gz');
  });
  after(async () => {
    await ch?.cleanup();
  });

  it(`${MAX_MESSAGES} frames at most: each answered as the protocol says, nothing else suffers`, async (t) => {
    t.diagnostic(`seed ${SEED} (BATON_FUZZ_SEED=${SEED} replays it)`);
    const tally: Tally = {
      messages: 0,
      connections: 0,
      closes: {},
      replies: {},
      authenticated: 0,
      uploads: 0,
      uploadsSent: 0,
      cut: 0,
      codes: {},
      failures: [],
    };
    const fx: Fixture = { port: ch.channelPort, token: ch.token, signed };
    const traffic = startLoad(ch.appPort, { workers: 2, keepAlive: true, maxRequests: 200_000 });
    try {
      const started = Date.now();
      let nextConnection = 0;
      const worker = async () => {
        while (tally.messages < MAX_MESSAGES && Date.now() - started < TIME_BUDGET_MS) {
          const k = nextConnection++;
          try {
            await fuzzConnection(k, fx, tally);
          } catch (err) {
            tally.failures.push(`seed ${SEED} connection ${k}: ${(err as Error).message}`);
          }
          if (tally.failures.length) return;
        }
      };
      await withDeadline(Promise.all(Array.from({ length: WORKERS }, worker)), 'the fuzz', 60_000);
      t.diagnostic(
        `${tally.messages} frames over ${tally.connections} connections in ${Date.now() - started} ms; ` +
          `${tally.authenticated} authenticated, ${tally.uploads} uploads asked for, ${tally.uploadsSent} sent whole, ${tally.cut} cut by a takeover; ` +
          `closes ${JSON.stringify(tally.closes)}; answers ${JSON.stringify(tally.replies)}; ` +
          `error codes ${JSON.stringify(tally.codes)}`,
      );
      // A dead agent first: every failure after its crash is only a symptom of it.
      assert.equal(
        ch.agent.proc.exitCode,
        null,
        `the agent died (seed ${SEED}):\n${ch.agent.output.slice(-25).join('\n')}`,
      );
      assert.deepEqual(tally.failures.slice(0, 5), [], `seed ${SEED}`);
      // Fewer than MAX_MESSAGES only when the time budget ran out first (a busy machine).
      assert.ok(tally.messages >= 500, `enough frames sent (${tally.messages})`);
      assert.ok(tally.authenticated > 0 && tally.replies.reply! > 0, 'fuzz reached past auth');

      // A good client gets in and gets a status reply.
      const dialer = directDialer(`ws://127.0.0.1:${ch.channelPort}`);
      const client = await withDeadline(AgentClient.connect(dialer, ch.token), 'a good client');
      try {
        const status = (await withDeadline(
          client.query({ type: 'status' }),
          'status',
        )) as AgentStatus;
        assert.equal(status.apps[0]!.generation!.releaseId, 'r0', 'no fuzzed deploy went through');
      } finally {
        client.close();
      }
      // And the agent still deploys: no session, upload or lock left behind by the fuzz.
      const outcome = await withDeadline(
        deployToHost(
          dialer,
          ch.token,
          {
            kind: 'deploy',
            deployId: 'after-fuzz',
            app: 'web',
            manifest: signed,
            archive,
            origin: { actor: 'fuzz-test' },
          },
          { event: () => undefined, note: () => undefined },
          { reconnects: 0 },
        ),
        'a deploy after the fuzz',
      );
      assert.equal(outcome.ok, true, JSON.stringify(outcome.error));
      const served = await traffic.stop();
      assert.deepEqual(served.errors, {}, `seed ${SEED}`);
      assert.equal(served.non2xx, 0);
      assert.ok(served.ok > 0);
    } finally {
      // A failed assertion above must not leave the load running to its request cap.
      await traffic.stop();
    }
    const res = await get(ch.appPort);
    assert.equal(res.status, 200);
    assert.equal(res.body.split(' ')[0], 'fuzz1');
  });
});
