// Shared dirs and files: kept across deploys, owned by the app's user, and a symlink out is refused.
import assert from 'node:assert/strict';
import { lstat, mkdir, readdir, readFile, readlink, stat, symlink, unlink } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import type { StoreDeployResult, AppStatus } from '../../src/protocol/results.js';
import { releases, writeConfig } from '../../support/agent-config.js';
import { startAgent } from '../../support/agent-process.js';
import { control, listenerPort } from '../../support/control.js';
import { waitUntil, withDeadline } from '../../support/deadline.js';
import { get } from '../../support/http-get.js';
import { errorCodeOf } from '../support/cli-output.js';
import {
  NOBODY,
  passableTempDir,
  probeApp,
  startProbe,
  refusedRun,
  exists,
} from '../support/privilege-probe.js';
import { waitGone } from '../support/processes.js';

describe("shared paths belong to the app's user and stay inside its area", () => {
  it('a shared area with a symlink out stops only its own app, with one clear error, and the app starts by itself once mended', async () => {
    const tmp = await passableTempDir();
    try {
      const [r0, f0, f1] = await releases(tmp.dir, 'r0', 'f0', 'f1');
      // What the app's user could have done in its own shared area.
      const shared = path.join(tmp.dir, 'state/apps/files/shared');
      await mkdir(shared, { recursive: true });
      await symlink('/etc', path.join(shared, 'uploads'));
      const files = probeApp({
        name: 'files',
        release: f0,
        shared: { dirs: ['uploads'] },
        restart: { initialBackoffMs: 100, maxBackoffMs: 400 },
      });
      const symlinked =
        /shared path "uploads": .*uploads is a symlink: shared paths may not lead out/;

      // Alone, it is all there is to run: the agent does not start.
      const alone = await withDeadline(
        refusedRun(await writeConfig(tmp.dir, { stateDir: './state', apps: [files] })),
        'the agent to refuse its only app',
      );
      assert.notEqual(alone.code, 0);
      assert.equal(errorCodeOf(alone.stderr), 'SHARED_PATH_INVALID', alone.stderr);
      assert.match(alone.stderr, symlinked);

      // Beside another app: that one serves, this one is reported failed and tried again.
      let successor: number | undefined;
      const agent = await startAgent(
        await writeConfig(tmp.dir, {
          stateDir: './state',
          apps: [probeApp({ release: r0 }), files],
        }),
      );
      try {
        const statusOf = async (name: string) => {
          const { result } = await control(agent.socket, { method: 'status' });
          const app = (result as { apps: AppStatus[] }).apps.find((a) => a.name === name)!;
          return { app, port: listenerPort(result, name) };
        };
        const web = await statusOf('web');
        assert.equal(web.app.state, 'running');
        assert.equal((await get(web.port, '/whoami')).status, 200);
        const refused = await statusOf('files');
        assert.equal(refused.app.state, 'failed');
        assert.match(refused.app.lastError ?? '', symlinked);
        await agent.waitFor(
          (r) => r.phase === 'restarting' && r.app === 'files',
          'files to be started again',
        );
        assert.equal(await exists('/etc/uploads'), false, 'nothing made through the link');

        // An agent upgrade goes through: the new agent adopts web and tries files itself.
        const { result: upgraded } = await control(agent.socket, { method: 'upgrade' });
        successor = (upgraded as { pid: number }).pid;
        assert.equal(await withDeadline(agent.exited, 'the old agent to exit'), 0);
        const adopted = await statusOf('web');
        assert.equal(
          adopted.app.generation?.pid,
          web.app.generation?.pid,
          'adopted, not restarted',
        );
        assert.equal((await statusOf('files')).app.state, 'failed');

        // Mended: the next try starts it, shared path and all.
        await unlink(path.join(shared, 'uploads'));
        await waitUntil(
          async () => (await statusOf('files')).app.state === 'running',
          'files runs',
        );
        const mended = await statusOf('files');
        assert.equal((await get(mended.port, '/whoami')).status, 200);
        assert.equal((await lstat(path.join(shared, 'uploads'))).uid, NOBODY);
        assert.equal(await readlink(path.join(f0!, 'uploads')), path.join(shared, 'uploads'));
        // And it deploys like any other app.
        const { result } = await control(agent.socket, {
          method: 'deploy',
          app: 'files',
          releaseDir: f1!,
        });
        assert.equal((result as { releaseId: string }).releaseId, 'f1');
        assert.equal((await get(web.port, '/whoami')).status, 200, 'web served throughout');
      } finally {
        if (successor === undefined) await agent.stop();
        else {
          process.kill(successor, 'SIGTERM');
          await waitGone(successor);
        }
      }
    } finally {
      await tmp.cleanup();
    }
  });

  it('shared dirs and files survive deploys, pruning and a rollback, owned by the app user, contents untouched', async () => {
    const probe = await startProbe({
      keepReleases: 2,
      shared: { dirs: ['storage'], files: ['.env.local'] },
    });
    try {
      const sharedRoot = path.join(probe.stateDir, 'apps/web/shared');
      const write = async (rel: string, data: string) => {
        const res = await get(
          probe.port,
          `/write?path=${encodeURIComponent(rel)}&data=${encodeURIComponent(data)}`,
        );
        assert.equal(res.status, 200, `${rel}: ${res.body}`);
      };
      const read = async (rel: string) => {
        const res = await get(probe.port, `/read?path=${encodeURIComponent(rel)}`);
        assert.equal(res.status, 200, `${rel}: ${res.body}`);
        return res.body;
      };
      await write('storage/r0.txt', 'written by r0');
      await write('.env.local', 'LOCAL=from-r0\n');

      const pruned: string[] = [];
      const written = ['r0'];
      for (const id of ['a1', 'a2', 'a3']) {
        // The artifact brings its own storage/ and .env.local: the links replace them.
        const result = await probe.deployArtifact(id, {
          'storage/from-artifact.txt': `${id}\n`,
          '.env.local': 'FROM_ARTIFACT=1\n',
        });
        pruned.push(...result.pruned.removed);
        assert.match((await get(probe.port)).body, new RegExp(`^${id} `));
        for (const earlier of written)
          assert.equal(await read(`storage/${earlier}.txt`), `written by ${earlier}`);
        assert.equal(await read('.env.local'), 'LOCAL=from-r0\n');
        await write(`storage/${id}.txt`, `written by ${id}`);
        written.push(id);
      }
      assert.ok(pruned.includes('a1'), `a1 pruned with keepReleases 2: ${pruned.join(',')}`);
      assert.equal(await exists(path.join(probe.stateDir, 'apps/web/releases/a1')), false);

      const { result } = await control(probe.agent.socket, { method: 'rollback', app: 'web' });
      assert.equal((result as StoreDeployResult).releaseId, 'a2');
      assert.match((await get(probe.port)).body, /^a2 /);
      for (const id of written) assert.equal(await read(`storage/${id}.txt`), `written by ${id}`);
      assert.equal(await read('.env.local'), 'LOCAL=from-r0\n');

      // On disk: one shared area, every release linked to it, everything the app's.
      const storage = path.join(sharedRoot, 'storage');
      assert.deepEqual((await readdir(storage)).sort(), written.map((id) => `${id}.txt`).sort());
      for (const id of written)
        assert.equal(await readFile(path.join(storage, `${id}.txt`), 'utf8'), `written by ${id}`);
      assert.equal(await readFile(path.join(sharedRoot, '.env.local'), 'utf8'), 'LOCAL=from-r0\n');
      const dirStat = await stat(storage);
      assert.equal(dirStat.uid, NOBODY);
      assert.equal(dirStat.mode & 0o777, 0o750);
      assert.equal((await stat(path.join(sharedRoot, '.env.local'))).uid, NOBODY);
      for (const release of [
        probe.r0,
        ...['a2', 'a3'].map((id) => path.join(probe.stateDir, 'apps/web/releases', id)),
      ]) {
        assert.equal(await readlink(path.join(release, 'storage')), storage, release);
        assert.equal(
          await readlink(path.join(release, '.env.local')),
          path.join(sharedRoot, '.env.local'),
        );
      }
    } finally {
      await probe.cleanup();
    }
  });
});
