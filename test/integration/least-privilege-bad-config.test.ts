// Bad privilege settings, env files and configs are refused with one clear error, and never take down what runs.
import assert from 'node:assert/strict';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { releases, writeConfig } from '../../support/agent-config.js';
import { control, controlError } from '../../support/control.js';
import { get } from '../../support/http-get.js';
import { startLoad } from '../../support/load-client.js';
import { errorCodeOf } from '../support/cli-output.js';
import {
  passableTempDir,
  probeApp,
  writePrivate,
  startProbe,
  refusedRun,
  markingCommand,
  exists,
} from '../support/privilege-probe.js';

describe('bad privilege settings are refused and never take down what runs', () => {
  it('reports each bad input at config load with one clear error, starting nothing', async () => {
    const cases: {
      what: string;
      app: Record<string, unknown>;
      prepare?: (dir: string) => Promise<void>;
      code: string;
      message: RegExp;
    }[] = [
      {
        what: 'unknown user',
        app: { user: 'baton-no-such-user' },
        code: 'USER_UNKNOWN',
        message: /user "baton-no-such-user" does not exist on this host.*fix "user"/,
      },
      {
        what: 'unknown group',
        app: { group: 'baton-no-such-group' },
        code: 'GROUP_UNKNOWN',
        message: /group "baton-no-such-group" \(in "group"\) does not exist/,
      },
      {
        what: 'unknown supplementary group',
        app: { supplementaryGroups: ['users', 'baton-no-such-group'] },
        code: 'GROUP_UNKNOWN',
        message: /group "baton-no-such-group" \(in "supplementaryGroups"\) does not exist/,
      },
      {
        what: 'shared path with ../',
        app: { shared: { dirs: ['../escape'] } },
        code: 'CONFIG_INVALID',
        message: /apps\.0\.shared\.dirs\.0: a shared path may not contain "\.\."/,
      },
      {
        what: 'absolute shared path',
        app: { shared: { files: ['/etc/passwd'] } },
        code: 'CONFIG_INVALID',
        message: /apps\.0\.shared\.files\.0: a shared path is relative to the release/,
      },
      {
        what: 'missing env file',
        app: { envFile: './missing.env' },
        code: 'ENV_FILE_UNREADABLE',
        message: /cannot read env file .*missing\.env: .*ENOENT.*fix the app's "envFile"/,
      },
      {
        what: 'env file that is a directory',
        app: { envFile: './env-dir' },
        prepare: (dir) => mkdir(path.join(dir, 'env-dir')),
        code: 'ENV_FILE_UNREADABLE',
        message: /env-dir: not a regular file/,
      },
      {
        what: 'env file others may write',
        app: { envFile: './web.env' },
        prepare: async (dir) => {
          await writeFile(path.join(dir, 'web.env'), 'A=1\n');
          await chmod(path.join(dir, 'web.env'), 0o666);
        },
        code: 'ENV_FILE_INVALID',
        message: /web\.env is writable by others/,
      },
      {
        what: 'malformed env file',
        app: { envFile: './web.env' },
        prepare: (dir) =>
          writePrivate(path.join(dir, 'web.env'), 'GOOD=1\nDB_PASSWORD hunter2-not-shown\n'),
        code: 'ENV_FILE_INVALID',
        message: /web\.env:2: line has no "="/,
      },
    ];
    await Promise.all(
      cases.map(async (c) => {
        const tmp = await passableTempDir();
        try {
          const [r0] = await releases(tmp.dir, 'r0');
          await c.prepare?.(tmp.dir);
          const marker = path.join(tmp.dir, 'started');
          const configFile = await writeConfig(tmp.dir, {
            stateDir: './state',
            apps: [probeApp({ release: r0, command: markingCommand(marker), ...c.app })],
          });
          const { code, stderr } = await refusedRun(configFile);
          assert.notEqual(code, 0, c.what);
          assert.equal(errorCodeOf(stderr), c.code, `${c.what}: ${stderr}`);
          assert.match(stderr, c.message, c.what);
          assert.doesNotMatch(stderr, /problems in the config/, `${c.what}: one error`);
          assert.doesNotMatch(stderr, /hunter2/, `${c.what}: no value in the message`);
          assert.equal(await exists(marker), false, `${c.what}: no app process started`);
          assert.equal(await exists(path.join(tmp.dir, 'state/logs')), false, c.what);
        } finally {
          await tmp.cleanup();
        }
      }),
    );
  });

  it('a bad env file or config leaves the running generation untouched: the deploy and the agent upgrade fail, the old ones serve on', async () => {
    const probe = await startProbe(
      { envFile: './web.env' },
      { prepare: (dir) => writePrivate(path.join(dir, 'web.env'), 'GREETING=hello\n') },
    );
    try {
      const [v2] = await releases(probe.dir, 'v2');
      const before = await probe.status();
      const appPid = before.generation!.pid;
      const serving = async () => {
        const status = await probe.status();
        assert.equal(status.generation?.pid, appPid, 'the same generation serves');
        assert.equal(status.release?.id, 'r0');
        const res = await get(probe.port);
        assert.equal(res.status, 200);
        assert.equal(res.body, `r0 1 ${appPid}\n`);
      };

      await writePrivate(path.join(probe.dir, 'web.env'), 'GREETING=hello\nBROKEN LINE\n');
      const traffic = startLoad(probe.port, { workers: 2, keepAlive: false, maxRequests: 20_000 });
      const err = await controlError(probe.agent.socket, {
        method: 'deploy',
        app: 'web',
        releaseDir: v2!,
      });
      const served = await traffic.stop();
      assert.equal(err.code, 'ENV_FILE_INVALID', err.message);
      assert.match(err.message, /web\.env:2: line has no "="/);
      assert.deepEqual(served.errors, {});
      assert.equal(served.non2xx, 0);
      await serving();

      // The new agent process reads the config and the env file again: it refuses, this one stays.
      const upgrade1 = await controlError(probe.agent.socket, { method: 'upgrade' });
      assert.equal(upgrade1.code, 'CONTROL_FAILED');
      assert.match(upgrade1.lines.join('\n'), /ENV_FILE_INVALID/);
      assert.equal(
        ((await control(probe.agent.socket, { method: 'status' })).result as { pid: number }).pid,
        probe.agent.pid,
      );
      await serving();

      await writePrivate(path.join(probe.dir, 'web.env'), 'GREETING=hello\n');
      const good = await readFile(probe.configFile, 'utf8');
      const config = JSON.parse(good) as { apps: Record<string, unknown>[] };
      config.apps[0]!.user = 'baton-no-such-user';
      await writeFile(probe.configFile, JSON.stringify(config));
      const upgrade2 = await controlError(probe.agent.socket, { method: 'upgrade' });
      assert.equal(upgrade2.code, 'CONTROL_FAILED');
      assert.match(upgrade2.lines.join('\n'), /USER_UNKNOWN/);
      assert.equal(probe.agent.proc.exitCode, null, 'the old agent runs on');
      await serving();

      // Both fixed: the next deploy reads the env file again and goes through.
      await writeFile(probe.configFile, good);
      await control(probe.agent.socket, { method: 'deploy', app: 'web', releaseDir: v2! });
      assert.match((await get(probe.port)).body, /^v2 2 /);
    } finally {
      await probe.cleanup();
    }
  });
});
