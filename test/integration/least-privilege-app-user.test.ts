// An app runs as its configured user, never root unless allowRoot says so; nothing of it runs in the launch's root stage.
import assert from 'node:assert/strict';
import { chmod, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { isAlive } from '../../src/supervisor/process-util.js';
import { releases, webApp, writeConfig } from '../../support/agent-config.js';
import { startAgent } from '../../support/agent-process.js';
import { control, listenerPort } from '../../support/control.js';
import { withDeadline } from '../../support/deadline.js';
import { get } from '../../support/http-get.js';
import { startLoad } from '../../support/load-client.js';
import { FIXTURES } from '../../support/paths.js';
import { errorCodeOf } from '../support/cli-output.js';
import {
  run,
  PROBE,
  NOBODY,
  USERS_GID,
  Whoami,
  passableTempDir,
  writePrivate,
  startProbe,
  refusedRun,
  markingCommand,
  exists,
} from '../support/privilege-probe.js';
import { waitGone } from '../support/processes.js';

describe('an app runs as its configured user, never as root unless allowed', () => {
  it('an app and its hooks run as the configured user, with its groups, umask and limits, and cannot write their release', async () => {
    const hook =
      'id -u > hook-out/uid; id -G > hook-out/groups; umask > hook-out/umask; ' +
      'touch . 2>/dev/null && echo writable > hook-out/release || echo read-only > hook-out/release';
    const probe = await startProbe({
      group: 'nogroup',
      supplementaryGroups: ['users'],
      umask: '0027',
      limits: { openFiles: 2048, coreBytes: 0 },
      shared: { dirs: ['hook-out'] },
      hooks: { beforeRestart: hook },
    });
    try {
      const first = await probe.whoami();
      assert.equal(first.uid, NOBODY);
      assert.equal(first.writeRelease, 'EACCES', 'not even the plain release directory');

      const traffic = startLoad(probe.port, { workers: 2, keepAlive: false, maxRequests: 20_000 });
      const deployed = await probe.deployArtifact('a1');
      const served = await traffic.stop();
      assert.equal(deployed.releaseId, 'a1');
      assert.deepEqual(served.errors, {});
      assert.equal(served.non2xx, 0);
      assert.ok(served.ok > 0);
      assert.ok(served.bodies.has('a1'), 'the new release answered under load');

      const me = await probe.whoami();
      assert.equal(me.releaseDir, path.join(probe.stateDir, 'apps/web/releases/a1'));
      assert.deepEqual([me.uid, me.euid, me.gid], [NOBODY, NOBODY, NOBODY]);
      assert.deepEqual(me.groups, [USERS_GID], 'supplementary groups: users, and not root');
      assert.equal(me.umask, '0027');
      assert.deepEqual(me.openFiles, { soft: 2048, hard: 2048 });
      assert.equal(me.user, 'nobody');
      assert.equal(me.home, '/nonexistent');
      assert.equal(me.writeRelease, 'EACCES', 'the stored release is read-only to the app');
      assert.equal((await probe.status()).user, 'nobody');

      // What the agent keeps to itself stays out of the app's reach; its own release does not.
      const reach = async (file: string) =>
        (await get(probe.port, `/reach?path=${encodeURIComponent(file)}`)).body;
      for (const own of ['state.json', 'agent.sock', 'logs', '.'])
        assert.equal(await reach(path.join(probe.stateDir, own)), 'EACCES', own);
      assert.equal(await reach(path.join(probe.stateDir, 'apps/web/releases/a1/VERSION')), 'ok');
      assert.equal(await reach(path.join(probe.stateDir, 'apps/web/shared/hook-out')), 'ok');

      // The beforeRestart hook of that deploy ran as the app does.
      const out = path.join(probe.stateDir, 'apps/web/shared/hook-out');
      assert.equal((await readFile(path.join(out, 'uid'), 'utf8')).trim(), String(NOBODY));
      assert.deepEqual(
        (await readFile(path.join(out, 'groups'), 'utf8')).trim().split(' ').map(Number).sort(),
        [USERS_GID, NOBODY],
      );
      assert.equal((await readFile(path.join(out, 'umask'), 'utf8')).trim(), '0027');
      assert.equal((await readFile(path.join(out, 'release'), 'utf8')).trim(), 'read-only');
      const written = await stat(path.join(out, 'uid'));
      assert.equal(written.uid, NOBODY);
      assert.equal(written.mode & 0o777, 0o640, 'created under umask 0027');
    } finally {
      await probe.cleanup();
    }
  });

  it("an LD_PRELOAD from the env file or a release's baton.yml runs only as the app's user, never in the launch's root stage", async () => {
    // A real preload library that says, on stderr, which uid each program it loads into runs as.
    const preloadLines = (text: string) => text.split('\n').filter((l) => l.startsWith('preload '));
    let library = '';
    const probe = await startProbe(
      { envFile: './app.env', hooks: { beforeRestart: 'echo hook ran' } },
      {
        prepare: async (dir) => {
          const source = path.join(dir, 'preload.c');
          library = path.join(dir, 'preload.so');
          await writeFile(
            source,
            '#include <stdio.h>\n#include <unistd.h>\n' +
              '__attribute__((constructor)) static void said(void) {\n' +
              '  fprintf(stderr, "preload uid=%d euid=%d\\n", (int)getuid(), (int)geteuid());\n}\n',
          );
          await run('cc', ['-shared', '-fPIC', '-o', library, source]);
          await chmod(library, 0o755);
          await writePrivate(path.join(dir, 'app.env'), `LD_PRELOAD=${library}\n`);
        },
      },
    );
    try {
      const log = await readFile(path.join(probe.stateDir, 'logs/web.gen-1.log'), 'utf8');
      const started = preloadLines(log);
      assert.ok(started.length >= 1, `the app itself loaded it:\n${log}`);
      for (const line of started) assert.equal(line, `preload uid=${NOBODY} euid=${NOBODY}`);
      // The same through a release's own baton.yml, for a hook and a generation.
      await writePrivate(path.join(probe.dir, 'app.env'), '');
      await probe.deployArtifact('r1', {
        'baton.yml': `command: [node, ${JSON.stringify(PROBE)}]\nenv: {LD_PRELOAD: ${JSON.stringify(library)}}\n`,
      });
      const hook = probe.agent.events.flatMap((e) =>
        e.type === 'log' && e.source === 'hook:beforeRestart' ? [e.line] : [],
      );
      assert.ok(hook.includes('hook ran'), hook.join('\n'));
      const deployed = preloadLines(
        await readFile(path.join(probe.stateDir, 'logs/web.gen-2.log'), 'utf8'),
      );
      assert.ok(preloadLines(hook.join('\n')).length >= 1 && deployed.length >= 1);
      for (const line of [...preloadLines(hook.join('\n')), ...deployed])
        assert.equal(line, `preload uid=${NOBODY} euid=${NOBODY}`);
    } finally {
      await probe.cleanup();
    }
  });

  it("an app for systemd's notify protocol as nobody: its socket is nobody's, its directory stays the agent's, before and after an agent upgrade", async () => {
    const probe = await startProbe({
      // Debian's python3: pyenv's shims under /root are not for nobody.
      command: ['/usr/bin/python3', path.join(FIXTURES, 'sd_notify_app.py')],
      readiness: { type: 'systemd', timeoutMs: 10_000 },
      env: { PYTHONDONTWRITEBYTECODE: '1' },
    });
    let successor: number | undefined;
    const socketOf = async () => {
      const state = JSON.parse(await readFile(path.join(probe.stateDir, 'state.json'), 'utf8')) as {
        apps: { web: { generation: { notifySocket: string } } };
      };
      return state.apps.web.generation.notifySocket;
    };
    const checkOwnership = async () => {
      const socket = await socketOf();
      const file = await stat(socket);
      assert.equal(file.uid, NOBODY, 'the socket belongs to the app user');
      assert.equal(file.mode & 0o777, 0o600);
      const dir = await stat(path.dirname(socket));
      assert.equal(dir.uid, 0, "the socket's directory stays the agent's");
      assert.equal(dir.mode & 0o777, 0o710);
      // As the app's user: nothing can be put in place of the socket.
      const swap = await run('/usr/bin/setpriv', [
        `--reuid=${NOBODY}`,
        `--regid=${NOBODY}`,
        '--clear-groups',
        '--',
        '/bin/sh',
        '-c',
        'ln -s /etc/hostname "$0.new" && mv -f "$0.new" "$0"',
        socket,
      ]).then(
        () => 'swapped',
        (err: { stderr?: string }) => err.stderr ?? '',
      );
      assert.match(swap, /Permission denied/);
    };
    try {
      assert.match((await probe.status()).notifyStatus ?? '', /^serving \d+$/);
      await checkOwnership();
      const { result } = await control(probe.agent.socket, { method: 'upgrade' });
      successor = (result as { pid: number }).pid;
      await withDeadline(probe.agent.exited, 'the old agent to exit');
      await checkOwnership();
      assert.match((await get(probe.port)).body, /^sd r0 1 /);
    } finally {
      if (successor !== undefined && isAlive(successor)) {
        process.kill(successor, 'SIGTERM');
        await waitGone(successor);
      }
      await probe.cleanup();
    }
  });

  it('refuses to run an app as root unless allowRoot says so, starting nothing', async () => {
    const refused = async (app: Record<string, unknown>) => {
      const tmp = await passableTempDir();
      try {
        const [r0] = await releases(tmp.dir, 'r0');
        const marker = path.join(tmp.dir, 'started');
        const configFile = await writeConfig(tmp.dir, {
          stateDir: './state',
          apps: [webApp({ release: r0, command: markingCommand(marker), ...app })],
        });
        const { code, stderr } = await refusedRun(configFile);
        assert.notEqual(code, 0);
        assert.equal(errorCodeOf(stderr), 'RUN_AS_ROOT_REFUSED', stderr);
        // The message says how to fix it: an unprivileged user, or allowRoot.
        assert.match(stderr, /app web would run as root: set "user"/);
        assert.match(stderr, /"allowRoot: true"/);
        assert.equal(await exists(marker), false, 'no app process was started');
        assert.equal(await exists(path.join(tmp.dir, 'state')), false, 'nothing was touched');
      } finally {
        await tmp.cleanup();
      }
    };
    await Promise.all([
      refused({ allowRoot: false }),
      refused({ allowRoot: false, user: 'root' }),
      refused({ allowRoot: false, user: '0' }),
    ]);

    const tmp = await passableTempDir();
    try {
      const [r0] = await releases(tmp.dir, 'r0');
      const marker = path.join(tmp.dir, 'started');
      const agent = await startAgent(
        await writeConfig(tmp.dir, {
          stateDir: './state',
          apps: [webApp({ release: r0, command: markingCommand(marker), allowRoot: true })],
        }),
      );
      try {
        const port = listenerPort((await control(agent.socket, { method: 'status' })).result);
        const me = JSON.parse((await get(port, '/whoami')).body) as Whoami;
        assert.equal(me.uid, 0);
        assert.equal(await exists(marker), true);
      } finally {
        await agent.stop();
      }
    } finally {
      await tmp.cleanup();
    }
  });
});
