import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { WebSocket } from 'ws';
import type { AgentStatus } from '../../src/protocol/results.js';
import { openSsh } from '../../src/transport/ssh.js';
import { batonAsync } from '../../support/baton-cli.js';
import { type ChannelAgent, startChannelAgent } from '../../support/channel-agent.js';
import { waitUntil, withDeadline } from '../../support/deadline.js';
import { startLoad } from '../../support/load-client.js';
import { errorCodeOf, jsonLines, outcomeOf } from '../support/cli-output.js';
import { gatedHook } from '../support/gates.js';
import { startCutProxy, type CutProxy } from '../support/cut-proxy.js';
import { startSshd, type TestSshd } from '../../support/sshd.js';

describe('remote deploys through a real OpenSSH server', () => {
  let ch: ChannelAgent;
  let sshd: TestSshd;
  let knownHosts: string;
  let ssh: string[];
  before(async () => {
    sshd = await startSshd();
    if (sshd.kind !== 'openssh')
      process.stderr.write('\n*** channel-ssh: NOT the real OpenSSH (sshd missing) ***\n\n');
    ch = await startChannelAgent();
    knownHosts = path.join(ch.dir, 'known_hosts');
    await writeFile(knownHosts, sshd.knownHostsLine + '\n');
    ssh = [
      '--host',
      sshd.target,
      '-i',
      sshd.clientKey.path,
      '--known-hosts',
      knownHosts,
      '--agent-socket',
      ch.channelSocket,
      '--token-file',
      ch.tokenFile,
    ];
  });
  after(async () => {
    await ch?.cleanup();
    await sshd?.stop();
  });

  it('deploys under load with zero failed requests, lists releases, then rolls back', async () => {
    const src = await ch.source('s1');
    const traffic = startLoad(ch.appPort, { workers: 4, keepAlive: false, maxRequests: 100_000 });
    const res = await batonAsync(ch.deployArgs(src, 's1', ...ssh)).done;
    assert.equal(res.code, 0, res.stderr);
    const outcome = outcomeOf(res.stdout);
    assert.equal(outcome.ok, true);
    assert.equal(outcome.releaseId, 's1');
    assert.ok(outcome.uploadedBytes > 0);

    const listed = await batonAsync(['releases', '--app', 'web', '--json', ...ssh]).done;
    assert.equal(listed.code, 0, listed.stderr);
    const releases = JSON.parse(listed.stdout) as { id: string; status: string }[];
    assert.equal(releases.find((r) => r.id === 's1')?.status, 'current');

    const status = await batonAsync(['status', '--json', ...ssh]).done;
    assert.equal(status.code, 0, status.stderr);
    assert.equal((JSON.parse(status.stdout) as AgentStatus).apps[0]!.release?.id, 's1');

    const back = await batonAsync(['rollback', '--app', 'web', '--json', ...ssh]).done;
    assert.equal(back.code, 0, back.stderr);
    const rolled = outcomeOf(back.stdout);
    assert.equal(rolled.kind, 'rollback');
    assert.equal(rolled.releaseId, 'r0');
    assert.equal(rolled.uploadedBytes, 0);
    const served = await traffic.stop();
    assert.deepEqual(served.errors, {});
    assert.equal(served.non2xx, 0);
    assert.ok(served.bodies.has('s1') && served.bodies.has('r0'));
  });

  it('refuses an unknown host key and a changed one, before anything is sent', async () => {
    const src = await ch.source('never');
    const before = await ch.generation();
    const empty = path.join(ch.dir, 'known_hosts_empty');
    await writeFile(empty, '');
    const common = [
      'deploy',
      src,
      '--app',
      'web',
      '--key',
      ch.keyFile,
      '--host',
      sshd.target,
      '-i',
      sshd.clientKey.path,
      '--agent-socket',
      ch.channelSocket,
      '--token-file',
      ch.tokenFile,
    ];
    const unknown = await batonAsync([...common, '--known-hosts', empty]).done;
    assert.notEqual(unknown.code, 0);
    assert.equal(errorCodeOf(unknown.stderr), 'SSH_HOST_KEY_UNKNOWN', unknown.stderr);

    // Another key for the same [host]:port: what a man in the middle would present.
    const other = sshd.knownHostsLine.replace(
      /ssh-ed25519 \S+/,
      `ssh-ed25519 ${sshd.strangerKey.publicKey.split(' ')[1]}`,
    );
    const changed = path.join(ch.dir, 'known_hosts_changed');
    await writeFile(changed, other + '\n');
    const mismatch = await batonAsync([
      ...common,
      '--known-hosts',
      changed,
      '--accept-unknown-host-key',
    ]).done;
    assert.notEqual(mismatch.code, 0);
    assert.equal(errorCodeOf(mismatch.stderr), 'SSH_HOST_KEY_MISMATCH', mismatch.stderr);

    const pinned = await batonAsync([...common, '--fingerprint', 'SHA256:' + 'A'.repeat(43)]).done;
    assert.notEqual(pinned.code, 0);
    assert.equal(errorCodeOf(pinned.stderr), 'SSH_HOST_KEY_MISMATCH', pinned.stderr);
    assert.deepEqual(await ch.generation(), before);
  });

  it('refuses a wrong token: AUTH_FAILED, and the app is untouched', async () => {
    const src = await ch.source('never2');
    const before = await ch.generation();
    const badToken = path.join(ch.dir, 'bad-token');
    await writeFile(badToken, randomBytes(32).toString('base64url'), { mode: 0o600 });
    const args = ssh.map((a) => (a === ch.tokenFile ? badToken : a));
    const res = await batonAsync(['deploy', src, '--app', 'web', '--key', ch.keyFile, ...args])
      .done;
    assert.notEqual(res.code, 0);
    assert.equal(errorCodeOf(res.stderr), 'AUTH_FAILED', res.stderr);
    assert.deepEqual(await ch.generation(), before);
  });

  it('a busy app: a second deploy gets DEPLOY_BUSY naming the first', async () => {
    const gate = gatedHook(ch.dir, 'busy-gate');
    const slow = await ch.source('slow1', {
      hook: gate.hook,
    });
    const other = await ch.source('other1');
    const first = batonAsync(ch.deployArgs(slow, 'slow1', '--deploy-id', 'busy-first', ...ssh));
    await ch.agent.waitFor(
      (r) => r.type === 'phase' && r.phase === 'hook-started' && r.releaseId === 'slow1',
      'the first deploy holds the app',
    );
    const second = await batonAsync([
      'deploy',
      other,
      '--app',
      'web',
      '--key',
      ch.keyFile,
      '--release-id',
      'other1',
      ...ssh,
    ]).done;
    await gate.open();
    assert.notEqual(second.code, 0);
    assert.equal(errorCodeOf(second.stderr), 'DEPLOY_BUSY', second.stderr);
    assert.match(second.stderr, /busy-first/);
    const res = await first.done;
    assert.equal(res.code, 0, res.stderr);
    assert.equal(outcomeOf(res.stdout).releaseId, 'slow1');
  });

  it('SSH cut mid-upload and mid-hook: reconnects, re-attaches, deploys once', async () => {
    const proxy: CutProxy = await startCutProxy(sshd.port);
    try {
      const viaProxy = [
        '--host',
        `${sshd.user}@127.0.0.1:${proxy.port}`,
        '-i',
        sshd.clientKey.path,
        '--fingerprint',
        sshd.fingerprint,
        '--agent-socket',
        ch.channelSocket,
        '--token-file',
        ch.tokenFile,
      ];
      const big = await ch.source('bigssh', {
        files: { 'blob.bin': randomBytes(16 * 1024 * 1024) },
      });
      const gen0 = await ch.generation();
      proxy.cutAfter(4 * 1024 * 1024);
      const up = await batonAsync(
        ch.deployArgs(big, 'bigssh', '--deploy-id', 'ssh-cut-upload', ...viaProxy),
      ).done;
      assert.equal(up.code, 0, up.stderr);
      const upLines = jsonLines(up.stdout);
      assert.ok(
        upLines.some((l) => l.type === 'note'),
        'a reconnect was reported',
      );
      assert.equal(upLines.filter((l) => l.type === 'result').length, 1);
      assert.equal(outcomeOf(up.stdout).releaseId, 'bigssh');
      assert.equal((await ch.generation()).number, gen0.number + 1);

      const gate = gatedHook(ch.dir, 'ssh-hook-gate');
      const hooked = await ch.source('hookssh', {
        hook: gate.hook,
      });
      const run = batonAsync(
        ch.deployArgs(hooked, 'hookssh', '--deploy-id', 'ssh-cut-hook', ...viaProxy),
      );
      await ch.agent.waitFor(
        (r) => r.type === 'phase' && r.phase === 'hook-started' && r.releaseId === 'hookssh',
        'hook started',
      );
      const seen = proxy.connections;
      proxy.cut();
      await waitUntil(() => proxy.connections > seen, 'the client reconnects');
      await gate.open();
      const res = await run.done;
      assert.equal(res.code, 0, res.stderr);
      const lines = jsonLines(res.stdout);
      assert.equal(lines.filter((l) => l.type === 'result').length, 1);
      assert.equal(outcomeOf(res.stdout).releaseId, 'hookssh');
      assert.equal((await ch.generation()).number, gen0.number + 2, 'each deployed once');
    } finally {
      await proxy.close();
    }
  });

  it('a client speaking another protocol version through the tunnel: PROTOCOL_MISMATCH naming both', async () => {
    const conn = await openSsh({
      target: sshd.target,
      privateKey: sshd.clientKey.privateKey,
      knownHosts: [sshd.knownHostsLine],
    });
    try {
      const stream = await conn.forward('127.0.0.1', ch.channelPort);
      const ws = new WebSocket(`ws://127.0.0.1:${ch.channelPort}`, {
        createConnection: () => stream as never,
      });
      const reply = await withDeadline(
        new Promise<{ msg: { code: string; message: string }; close: number }>(
          (resolve, reject) => {
            let msg: { code: string; message: string } | undefined;
            ws.on('open', () =>
              ws.send(JSON.stringify({ type: 'hello', protocols: [99], client: 'future' })),
            );
            ws.on('message', (d: Buffer) => (msg = JSON.parse(d.toString()) as typeof msg));
            ws.on('close', (close) =>
              msg
                ? resolve({ msg, close })
                : reject(new Error(`closed ${close} without a message`)),
            );
            ws.on('error', reject);
          },
        ),
        'the agent answers',
      );
      assert.equal(reply.msg.code, 'PROTOCOL_MISMATCH');
      assert.match(reply.msg.message, /99/);
      assert.match(reply.msg.message, /speaks 1/);
      assert.equal(reply.close, 4000);
    } finally {
      await conn.close();
    }
  });
});
