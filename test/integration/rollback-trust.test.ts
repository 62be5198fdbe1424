import assert from 'node:assert/strict';
import { readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import type { SignedManifest } from '../../src/protocol/manifest.js';
import { signManifest } from '../../src/artifact/sign.js';
import type { ReleaseInfo, AgentStatus } from '../../src/protocol/results.js';
import { isAlive } from '../../src/supervisor/process-util.js';
import { batonAsync, batonSync } from '../../support/baton-cli.js';
import { type ChannelAgent, startChannelAgent } from '../../support/channel-agent.js';
import { control } from '../../support/control.js';
import { withDeadline } from '../../support/deadline.js';
import { get } from '../../support/http-get.js';
import { errorCodeOf, outcomeOf } from '../support/cli-output.js';
import { waitGone } from '../support/processes.js';

/** The serving generation of `web`: unchanged means not touched. */
async function serving(ch: ChannelAgent): Promise<{ pid: number; releaseId: string }> {
  const status = (await control(ch.agent.socket, { method: 'status' })).result as AgentStatus;
  const gen = status.apps[0]!.generation!;
  return { pid: gen.pid, releaseId: gen.releaseId };
}

async function deploy(ch: ChannelAgent, id: string, via: string[], opts: { hook?: string } = {}) {
  const src = await ch.source(id, opts);
  return batonAsync(ch.deployArgs(src, id, ...via)).done;
}

async function deployOk(ch: ChannelAgent, id: string, via: string[] = ch.direct): Promise<void> {
  const r = await deploy(ch, id, via);
  assert.equal(r.code, 0, r.stderr);
}

function releasesOf(ch: ChannelAgent, via: string[]): Record<string, ReleaseInfo> {
  const r = batonSync(['releases', '--app', 'web', '--json', ...via]);
  assert.equal(r.status, 0, r.stderr);
  return Object.fromEntries((JSON.parse(r.stdout) as ReleaseInfo[]).map((x) => [x.id, x]));
}

describe('rollback checks a stored release as it is now', () => {
  it('a key removed from trustedKeys: what it signed is refused for rollback and redeploy (KEY_REVOKED), while the release of it already running keeps running', async () => {
    const ch = await startChannelAgent();
    const config = path.join(ch.dir, 'agent.json');
    let successor: number | undefined;
    try {
      await deployOk(ch, 'r1');
      await deployOk(ch, 'r2');
      const before = await serving(ch);
      assert.equal(before.releaseId, 'r2');

      // A new key; the old one, which signed r1 and r2, is revoked. The agent picks up its new
      // config through an upgrade: the app is adopted, not restarted.
      const newKeys = path.join(ch.dir, 'keys-new');
      assert.equal(batonSync(['keygen', '--out', newKeys]).status, 0);
      const newPub = (await readFile(path.join(newKeys, 'baton.pub'), 'utf8')).trim();
      const cfg = JSON.parse(await readFile(config, 'utf8')) as { trustedKeys: string[] };
      cfg.trustedKeys = [newPub];
      await writeFile(config, JSON.stringify(cfg, null, 2));
      const up = batonSync(['agent', 'upgrade', '--config', config]);
      assert.equal(up.status, 0, up.stderr);
      assert.equal(await withDeadline(ch.agent.exited, 'old agent exit'), 0);
      const status = (await control(ch.agent.socket, { method: 'status' })).result as AgentStatus;
      successor = status.pid;
      const via = ['--agent', `ws://127.0.0.1:${status.channelPort}`, '--token-file', ch.tokenFile];
      assert.deepEqual(await serving(ch), before, 'r2 runs on: same release, same process');

      // Over the channel, by name and as the previous release, forced or not.
      for (const args of [['--to', 'r1'], [], ['--to', 'r1', '--force']]) {
        const r = batonSync(['rollback', '--app', 'web', '--json', ...args, ...via]);
        assert.notEqual(r.status, 0, `rollback ${args.join(' ')} went through`);
        assert.equal(errorCodeOf(r.stderr), 'KEY_REVOKED', r.stderr);
        assert.equal(outcomeOf(r.stdout).error?.code, 'KEY_REVOKED');
      }
      // Through the control socket too.
      const local = batonSync([
        'agent',
        'rollback',
        '--config',
        config,
        '--app',
        'web',
        '--to',
        'r1',
      ]);
      assert.equal(errorCodeOf(local.stderr), 'KEY_REVOKED', local.stderr);
      assert.match(local.stderr, /no longer in trustedKeys/);
      // A redeploy of r1 as it was signed then (the store has it) is refused as well.
      const redeploy = await deploy(ch, 'r1', via);
      assert.equal(errorCodeOf(redeploy.stderr), 'KEY_UNKNOWN', redeploy.stderr);

      assert.deepEqual(await serving(ch), before, 'nothing was switched');
      assert.match((await get(ch.appPort)).body, /^r2 /);
      const listed = releasesOf(ch, via);
      assert.equal(listed.r1!.status, 'untrusted');
      assert.equal(listed.r2!.status, 'current');

      // A build signed with the new key deploys; its previous release, r2, is still revoked.
      const newKey = path.join(newKeys, 'baton.key');
      const r3 = await batonAsync([
        ...ch.deployArgs(await ch.source('r3'), 'r3', ...via),
        '--key',
        newKey,
      ]).done;
      assert.equal(r3.code, 0, r3.stderr);
      const back = batonSync(['rollback', '--app', 'web', '--json', ...via]);
      assert.equal(errorCodeOf(back.stderr), 'KEY_REVOKED', back.stderr);
      assert.match((await get(ch.appPort)).body, /^r3 /);

      // r1 signed again with the new key: trusted again, and the host has its archive.
      const again = await batonAsync([
        ...ch.deployArgs(await ch.source('r1'), 'r1', ...via),
        '--key',
        newKey,
      ]).done;
      assert.equal(again.code, 0, again.stderr);
      assert.equal(outcomeOf(again.stdout).uploadedBytes, 0);
      assert.match((await get(ch.appPort)).body, /^r1 /);
    } finally {
      if (successor !== undefined && isAlive(successor)) {
        process.kill(successor, 'SIGTERM');
        await waitGone(successor);
      }
      await ch.cleanup();
    }
  });

  it('a release marked failed is refused with RELEASE_FAILED, over the channel and locally; --force takes it, and then it is failed no more', async () => {
    const ch = await startChannelAgent();
    const config = path.join(ch.dir, 'agent.json');
    // The hook fails while this file exists: a release that failed for a cause since mended.
    const block = path.join(ch.dir, 'block');
    const hook = `test ! -e ${block}`;
    try {
      await deployOk(ch, 'ok1');
      for (const id of ['f1', 'f2']) {
        await writeFile(block, '');
        const failed = await deploy(ch, id, ch.direct, { hook });
        assert.equal(errorCodeOf(failed.stderr), 'HOOK_FAILED', failed.stderr);
      }
      await rm(block);
      const before = await serving(ch);
      assert.equal(before.releaseId, 'ok1');
      assert.equal(releasesOf(ch, ch.direct).f1!.status, 'failed');

      const remote = batonSync(['rollback', '--app', 'web', '--to', 'f1', '--json', ...ch.direct]);
      assert.equal(errorCodeOf(remote.stderr), 'RELEASE_FAILED', remote.stderr);
      assert.match(remote.stderr, /marked failed at .*HOOK_FAILED|marked failed at .*hook/i);
      assert.match(remote.stderr, /--force/);
      const local = batonSync([
        'agent',
        'rollback',
        '--config',
        config,
        '--app',
        'web',
        '--to',
        'f2',
      ]);
      assert.equal(errorCodeOf(local.stderr), 'RELEASE_FAILED', local.stderr);
      assert.deepEqual(await serving(ch), before, 'nothing was switched');

      const forced = batonSync([
        'rollback',
        '--app',
        'web',
        '--to',
        'f1',
        '--force',
        '--json',
        ...ch.direct,
      ]);
      assert.equal(forced.status, 0, forced.stderr);
      assert.equal(outcomeOf(forced.stdout).releaseId, 'f1');
      assert.match((await get(ch.appPort)).body, /^f1 /);
      const forcedLocal = batonSync([
        'agent',
        'rollback',
        '--config',
        config,
        '--app',
        'web',
        '--to',
        'f2',
        '--force',
      ]);
      assert.equal(forcedLocal.status, 0, forcedLocal.stderr);
      assert.match((await get(ch.appPort)).body, /^f2 /);

      // f1 served: back to it needs no --force.
      const listed = releasesOf(ch, ch.direct);
      assert.equal(listed.f1!.status, 'previous');
      assert.equal(listed.f1!.failedReason, undefined);
      const back = batonSync(['rollback', '--app', 'web', '--json', ...ch.direct]);
      assert.equal(back.status, 0, back.stderr);
      assert.match((await get(ch.appPort)).body, /^f1 /);
    } finally {
      await ch.cleanup();
    }
  });
});

describe('release ids ending in .json', () => {
  it('deploying release id X.json is refused with RELEASE_ID_INVALID and X is unharmed: listed, rolled back to, and pruned in its turn', async () => {
    const ch = await startChannelAgent({}, { keepReleases: 3 });
    try {
      for (const id of ['x1', 'y1', 'z1']) await deployOk(ch, id);

      // An artifact signed with the trusted key whose release id is "x1.json" (baton pack
      // refuses such an id; an older baton, or a hand-made manifest, does not).
      const out = path.join(ch.dir, 'out');
      const packed = batonSync([
        'pack',
        await ch.source('attack'),
        '--app',
        'web',
        '--out',
        out,
        '--release-id',
        'attack',
        '--key',
        ch.keyFile,
      ]);
      assert.equal(packed.status, 0, packed.stderr);
      const signed = JSON.parse(
        await readFile(path.join(out, 'attack.manifest.json'), 'utf8'),
      ) as SignedManifest;
      const forged = signManifest(
        { ...signed.manifest, releaseId: 'x1.json' },
        await readFile(ch.keyFile, 'utf8'),
      );
      const manifest = path.join(out, 'x1.json.manifest.json');
      await writeFile(manifest, JSON.stringify(forged));
      const r = batonSync([
        'deploy',
        path.join(out, 'attack.tar.gz'),
        '--manifest',
        manifest,
        '--app',
        'web',
        '--json',
        ...ch.direct,
      ]);
      assert.equal(errorCodeOf(r.stderr), 'RELEASE_ID_INVALID', r.stderr);
      assert.equal(outcomeOf(r.stdout).uploadedBytes, 0, 'refused before the upload');
      assert.match((await get(ch.appPort)).body, /^z1 /);

      const listed = releasesOf(ch, ch.direct);
      assert.equal(listed.x1?.status, 'kept');
      assert.equal(listed['x1.json'], undefined);
      const back = batonSync(['rollback', '--app', 'web', '--to', 'x1', '--json', ...ch.direct]);
      assert.equal(back.status, 0, back.stderr);
      assert.match((await get(ch.appPort)).body, /^x1 /);

      // Pruning goes on as before: the newest 3, and current and previous among them.
      for (const id of ['p1', 'p2', 'p3']) await deployOk(ch, id);
      const ids = Object.keys(releasesOf(ch, ch.direct)).sort();
      assert.deepEqual(ids, ['p1', 'p2', 'p3']);
      const dirs = (await readdir(path.join(ch.stateDir, 'apps/web/releases'))).sort();
      assert.deepEqual(dirs, ['p1', 'p2', 'p3']);
    } finally {
      await ch.cleanup();
    }
  });
});
