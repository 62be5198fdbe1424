import assert from 'node:assert/strict';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { releases, webApp, writeConfig } from '../../support/agent-config.js';
import { type RunningAgent, startAgent } from '../../support/agent-process.js';
import { control, controlError, listenerPort } from '../../support/control.js';
import { get } from '../../support/http-get.js';
import { startLoad } from '../../support/load-client.js';
import { FIXTURES } from '../../support/paths.js';
import { tempDir } from '../../support/temp-dir.js';
import { batonSync } from '../../support/baton-cli.js';

/** Runs the CLI, which must succeed; its stdout. */
function baton(...args: string[]): string {
  const r = batonSync(args);
  assert.equal(r.status, 0, `baton ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

describe('deploying packed, signed artifacts through the release store', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>;
  let agent: RunningAgent;
  let port: number;
  let out: string;
  let publicKey: string;

  /** Packs a version of the app (its baton.yml names the fixture) as release `id`. */
  async function pack(
    id: string,
    opts: { sign?: boolean; mode?: string } = {},
  ): Promise<{ archive: string; manifest: string }> {
    const src = path.join(tmp.dir, 'src', id);
    await mkdir(src, { recursive: true });
    await writeFile(
      path.join(src, 'baton.yml'),
      `command: [node, ${JSON.stringify(path.join(FIXTURES, 'by-release-mode.mjs'))}]\n`,
    );
    await writeFile(path.join(src, 'mode'), `${opts.mode ?? 'serve'}\n`);
    // Content of its own: packing is reproducible, so equal trees would be one artifact.
    await writeFile(path.join(src, 'VERSION'), `${id}\n`);
    const args = ['pack', src, '--app', 'web', '--out', out, '--release-id', id];
    if (opts.sign ?? true) args.push('--key', path.join(tmp.dir, 'keys', 'baton.key'));
    baton(...args);
    return {
      archive: path.join(out, `${id}.tar.gz`),
      manifest: path.join(out, `${id}.manifest.json`),
    };
  }

  before(async () => {
    tmp = await tempDir();
    out = path.join(tmp.dir, 'out');
    baton('keygen', '--out', path.join(tmp.dir, 'keys'));
    publicKey = (await readFile(path.join(tmp.dir, 'keys', 'baton.pub'), 'utf8')).trim();
    const [r0] = await releases(tmp.dir, 'r0');
    agent = await startAgent(
      await writeConfig(tmp.dir, {
        stateDir: './state',
        trustedKeys: [publicKey],
        apps: [webApp({ release: r0, keepReleases: 3 })],
      }),
    );
    port = listenerPort((await control(agent.socket, { method: 'status' })).result);
  });
  after(async () => {
    await agent?.stop();
    await tmp?.cleanup();
  });

  const deploy = (a: { archive: string; manifest: string }) =>
    control(agent.socket, {
      method: 'deploy-artifact',
      app: 'web',
      archive: a.archive,
      manifest: a.manifest,
    });

  it('deploys a signed artifact under load with zero drops, the release running from its own unpacked copy', async () => {
    const a1 = await pack('a1');
    const traffic = startLoad(port, { workers: 8, keepAlive: false });
    await deploy(a1);
    const r = await traffic.stop();
    assert.deepEqual(r.errors, {});
    assert.match((await get(port)).body, /^a1 /);
    assert.ok((await readdir(path.join(tmp.dir, 'state/apps/web/releases'))).includes('a1'));
  });

  it('a redeploy of a digest the store has copies nothing and unpacks nothing again', async () => {
    const a2 = await pack('a2');
    await deploy(a2);
    const archives = path.join(tmp.dir, 'state/apps/web/artifacts');
    const before = await readdir(archives);
    await control(agent.socket, { method: 'rollback', app: 'web' });
    await deploy(a2);
    assert.deepEqual(await readdir(archives), before);
    assert.match((await get(port)).body, /^a2 /);
  });

  it('rolls back to the previous release and to a named one, without an upload', async () => {
    await control(agent.socket, { method: 'rollback', app: 'web' });
    assert.match((await get(port)).body, /^a1 /);
    await control(agent.socket, { method: 'rollback', app: 'web', to: 'a2' });
    assert.match((await get(port)).body, /^a2 /);
    const err = await controlError(agent.socket, {
      method: 'rollback',
      app: 'web',
      to: 'never-deployed',
    });
    assert.equal(err.code, 'RELEASE_UNKNOWN');
  });

  it('refuses an unsigned artifact, a tampered archive and a tampered manifest; the app keeps serving', async () => {
    const unsigned = await pack('u1', { sign: false });
    assert.equal(
      (
        await controlError(agent.socket, {
          method: 'deploy-artifact',
          app: 'web',
          ...toPaths(unsigned),
        })
      ).code,
      'SIGNATURE_MISSING',
    );

    const tampered = await pack('t1');
    const bytes = await readFile(tampered.archive);
    bytes[bytes.length - 5] = bytes[bytes.length - 5]! ^ 0xff;
    await writeFile(tampered.archive, bytes);
    assert.equal(
      (
        await controlError(agent.socket, {
          method: 'deploy-artifact',
          app: 'web',
          ...toPaths(tampered),
        })
      ).code,
      'DIGEST_MISMATCH',
    );

    const forged = await pack('f1');
    const signed = JSON.parse(await readFile(forged.manifest, 'utf8')) as {
      manifest: { releaseId: string };
    };
    signed.manifest.releaseId = 'f1-forged';
    await writeFile(forged.manifest, JSON.stringify(signed));
    assert.equal(
      (
        await controlError(agent.socket, {
          method: 'deploy-artifact',
          app: 'web',
          ...toPaths(forged),
        })
      ).code,
      'SIGNATURE_INVALID',
    );

    assert.match((await get(port)).body, /^a2 /);
    const listed = (await control(agent.socket, { method: 'releases', app: 'web' })).result as {
      id: string;
    }[];
    assert.ok(
      !listed.some((r) => ['u1', 't1', 'f1', 'f1-forged'].includes(r.id)),
      'refused artifacts leave no release',
    );
  });

  it('marks a release that failed to start as failed, and lists every release with its status', async () => {
    const bad = await pack('bad1', { mode: 'exits-at-start' });
    assert.equal(
      (await controlError(agent.socket, { method: 'deploy-artifact', app: 'web', ...toPaths(bad) }))
        .code,
      'GENERATION_EXITED',
    );
    const listed = (await control(agent.socket, { method: 'releases', app: 'web' })).result as {
      id: string;
      status: string;
    }[];
    const byId = Object.fromEntries(listed.map((r) => [r.id, r.status]));
    assert.equal(byId.a2, 'current');
    assert.equal(byId.a1, 'previous');
    assert.equal(byId.bad1, 'failed');
  });

  it('keeps keepReleases releases, never current or previous, and says what it freed', async () => {
    for (const id of ['k1', 'k2', 'k3']) await deploy(await pack(id));
    const { result } = await deploy(await pack('k4'));
    const pruned = (result as { pruned: { removed: string[]; bytesFreed: number } }).pruned;
    const listed = (
      (await control(agent.socket, { method: 'releases', app: 'web' })).result as {
        id: string;
        status: string;
      }[]
    ).map((r) => r.id);
    assert.ok(listed.includes('k4') && listed.includes('k3'), listed.join(','));
    assert.ok(listed.length <= 3, listed.join(','));
    assert.ok(pruned.removed.length > 0 && pruned.bytesFreed > 0);
    for (const id of pruned.removed)
      assert.ok(!(await readdir(path.join(tmp.dir, 'state/apps/web/releases'))).includes(id));
  });
});

function toPaths(a: { archive: string; manifest: string }): { archive: string; manifest: string } {
  return { archive: a.archive, manifest: a.manifest };
}
