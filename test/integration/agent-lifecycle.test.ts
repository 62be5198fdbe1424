import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { describe, it } from 'node:test';
import { openListener } from '../../src/supervisor/listeners.js';
import { isAlive } from '../../src/supervisor/process-util.js';
import { releases, webApp, writeConfig } from '../../support/agent-config.js';
import { startAgent } from '../../support/agent-process.js';
import { control, listenerPort } from '../../support/control.js';
import { withDeadline } from '../../support/deadline.js';
import { freePort } from '../../support/free-port.js';
import { get } from '../../support/http-get.js';
import { startLoad } from '../../support/load-client.js';
import { FIXTURES } from '../../support/paths.js';
import { tempDir } from '../../support/temp-dir.js';
import { withWebAgent } from '../support/web-agent.js';
import { waitGone } from '../support/processes.js';
import { batonSync } from '../../support/baton-cli.js';

/** The CLI's exit code and output, named as these tests read them. */
function cli(...args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = batonSync(args);
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('agent lifecycle', () => {
  it('start, status, stop through the CLI, with a PID file that refuses a second agent and ignores a stale one', async () => {
    const tmp = await tempDir();
    try {
      const [v1] = await releases(tmp.dir, 'v1');
      const config = await writeConfig(tmp.dir, {
        stateDir: './state',
        apps: [webApp({ release: v1 })],
      });
      const pidFile = path.join(tmp.dir, 'state', 'agent.pid');
      // A PID file left by a crash, naming a pid that is not running, must not block the start.
      spawnSync('mkdir', ['-p', path.join(tmp.dir, 'state')]);
      await writeFile(pidFile, '999999\n');

      const started = cli('agent', 'start', '--config', config);
      assert.equal(started.code, 0, started.stderr);
      const pid = Number((await readFile(pidFile, 'utf8')).trim());
      assert.ok(isAlive(pid));

      const second = cli('agent', 'start', '--config', config);
      assert.equal(second.code, 1);
      assert.match(second.stderr, /AGENT_RUNNING/);

      const status = cli('agent', 'status', '--config', config, '--json');
      assert.equal(status.code, 0, status.stderr);
      const parsed = JSON.parse(status.stdout) as { pid: number; apps: { state: string }[] };
      assert.equal(parsed.pid, pid);
      assert.equal(parsed.apps[0]!.state, 'running');
      const port = listenerPort(parsed);
      assert.match((await get(port)).body, /^v1 /);

      const stopped = cli('agent', 'stop', '--config', config);
      assert.equal(stopped.code, 0, stopped.stderr);
      assert.ok(!isAlive(pid));
      await assert.rejects(get(port), { code: 'ECONNREFUSED' });
      const after = cli('agent', 'status', '--config', config);
      assert.equal(after.code, 1);
      assert.match(after.stderr, /AGENT_NOT_RUNNING/);
    } finally {
      await tmp.cleanup();
    }
  });

  it('a port in use gives one clear line and leaves the running app untouched', async () => {
    const tmp = await tempDir();
    try {
      const [v1] = await releases(tmp.dir, 'v1');
      const first = await startAgent(
        await writeConfig(tmp.dir, { stateDir: './state', apps: [webApp({ release: v1 })] }),
      );
      try {
        const port = listenerPort((await control(first.socket, { method: 'status' })).result);
        const otherDir = path.join(tmp.dir, 'other');
        spawnSync('mkdir', ['-p', otherDir]);
        const clash = await writeConfig(otherDir, {
          stateDir: './state',
          apps: [webApp({ release: v1, listeners: [{ name: 'http', tcp: `127.0.0.1:${port}` }] })],
        });
        const r = cli('agent', 'run', '--config', clash);
        assert.equal(r.code, 1);
        assert.match(r.stderr, /LISTENER_IN_USE/);
        assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
        assert.match((await get(port)).body, /^v1 /);
      } finally {
        await first.stop();
      }
    } finally {
      await tmp.cleanup();
    }
  });

  it('after SIGKILL of the agent the app keeps serving; a new agent re-adopts it and says the next deploy is cold', async () => {
    const tmp = await tempDir();
    try {
      const [v1, v2] = await releases(tmp.dir, 'v1', 'v2');
      // A fixed port, so that the second agent asks for the address the orphan still holds.
      const fixed = await freePort();
      const config = await writeConfig(tmp.dir, {
        stateDir: './state',
        apps: [webApp({ release: v1, listeners: [{ name: 'http', tcp: `127.0.0.1:${fixed}` }] })],
      });
      const first = await startAgent(config);
      const status = (await control(first.socket, { method: 'status' })).result as {
        apps: { generation: { pid: number } }[];
      };
      const port = listenerPort(status);
      const appPid = status.apps[0]!.generation.pid;
      first.proc.kill('SIGKILL');
      await first.exited;
      // The generation was started detached: it outlives the agent and still answers.
      assert.match((await get(port)).body, /^v1 /);
      assert.ok(isAlive(appPid));

      const second = await startAgent(config);
      try {
        await second.waitFor((r) => r.phase === 'adopted', 'adopted');
        const s2 = (await control(second.socket, { method: 'status' })).result as {
          apps: {
            generation: { pid: number };
            warning?: string;
            listeners: { origin?: string }[];
          }[];
        };
        assert.equal(s2.apps[0]!.generation.pid, appPid);
        assert.match(s2.apps[0]!.warning ?? '', /cold switch/);
        assert.equal(s2.apps[0]!.listeners[0]!.origin, undefined);

        const { result } = await control(second.socket, {
          method: 'deploy',
          app: 'web',
          releaseDir: v2!,
        });
        assert.equal((result as { cold: boolean }).cold, true);
        assert.match((await get(port)).body, /^v2 /);
        await waitGone(appPid);
        const s3 = (await control(second.socket, { method: 'status' })).result as {
          apps: { warning?: string }[];
        };
        assert.equal(s3.apps[0]!.warning, undefined);
      } finally {
        await second.stop();
      }
    } finally {
      await tmp.cleanup();
    }
  });

  it('under socket activation a restarted agent gets the listener back and hands over with zero drops', async () => {
    const tmp = await tempDir();
    // The test plays systemd: it binds and listens (never accepting) and passes fd 3 to each agent.
    const held = await openListener({
      name: 'http',
      tcp: { host: '127.0.0.1', port: 0, family: 4 },
      backlog: 511,
    });
    try {
      const [v1, v2] = await releases(tmp.dir, 'v1', 'v2');
      const config = await writeConfig(tmp.dir, {
        stateDir: './state',
        apps: [
          webApp({ release: v1, listeners: [{ name: 'http', tcp: `127.0.0.1:${held.port}` }] }),
        ],
      });
      const activation = { env: { LISTEN_FDS: '1', LISTEN_FDNAMES: 'web/http' }, stdio: [held.fd] };
      const first = await startAgent(config, activation);
      const status = (await control(first.socket, { method: 'status' })).result as {
        apps: { generation: { pid: number }; listeners: { origin: string }[] }[];
      };
      assert.equal(status.apps[0]!.listeners[0]!.origin, 'inherited');
      const traffic = startLoad(held.port!, { workers: 8, keepAlive: false });
      first.proc.kill('SIGKILL');
      await first.exited;
      const second = await startAgent(config, activation);
      try {
        await second.waitFor((r) => r.phase === 'adopted', 'adopted');
        const { result } = await control(second.socket, {
          method: 'deploy',
          app: 'web',
          releaseDir: v2!,
        });
        assert.equal((result as { cold: boolean }).cold, false);
        const r = await traffic.stop();
        assert.deepEqual(r.errors, {});
        assert.equal(r.ok, r.sent);
        assert.match((await get(held.port!)).body, /^v2 /);
      } finally {
        await traffic.stop();
        await second.stop();
      }
    } finally {
      held.close();
      await tmp.cleanup();
    }
  });

  it('upgrade replaces the agent process while the app serves, dropping nothing', async () => {
    const tmp = await tempDir();
    try {
      const [v1, v2] = await releases(tmp.dir, 'v1', 'v2');
      const config = await writeConfig(tmp.dir, {
        stateDir: './state',
        apps: [webApp({ release: v1 })],
      });
      const first = await startAgent(config);
      const port = listenerPort((await control(first.socket, { method: 'status' })).result);
      const traffic = startLoad(port, { workers: 8, keepAlive: true });
      const { result } = await control(first.socket, { method: 'upgrade' });
      const newPid = (result as { pid: number }).pid;
      assert.notEqual(newPid, first.pid);
      assert.equal(await withDeadline(first.exited, 'old agent exit'), 0);
      try {
        const s = (await control(first.socket, { method: 'status' })).result as {
          pid: number;
          apps: { listeners: { origin: string }[]; warning?: string }[];
        };
        assert.equal(s.pid, newPid);
        assert.equal(s.apps[0]!.listeners[0]!.origin, 'inherited');
        assert.equal(s.apps[0]!.warning, undefined);
        const deployed = await control(first.socket, {
          method: 'deploy',
          app: 'web',
          releaseDir: v2!,
        });
        assert.equal((deployed.result as { cold: boolean }).cold, false);
        const r = await traffic.stop();
        assert.deepEqual(r.errors, {});
        assert.equal(r.ok, r.sent);
        assert.match((await get(port)).body, /^v2 /);
      } finally {
        await traffic.stop();
        process.kill(newPid, 'SIGTERM');
        await waitGone(newPid);
      }
    } finally {
      await tmp.cleanup();
    }
  });

  it('a Python app adopts the socket and hands over to its next generation with zero drops', () =>
    withWebAgent(
      ['v1', 'v2'],
      { command: ['python3', path.join(FIXTURES, 'python_app.py')] },
      async ({ agent, port, dirs }) => {
        assert.match((await get(port)).body, /^python v1 /);
        const traffic = startLoad(port, { workers: 8, keepAlive: false });
        await control(agent.socket, { method: 'deploy', app: 'web', releaseDir: dirs.v2! });
        const r = await traffic.stop();
        assert.deepEqual(r.errors, {});
        assert.equal(r.ok, r.sent);
        assert.match((await get(port)).body, /^python v2 /);
      },
    ));

  it('serves a Unix socket listener and an IPv6 one', async () => {
    const tmp = await tempDir();
    try {
      const [v1] = await releases(tmp.dir, 'v1');
      const sock = path.join(tmp.dir, 'web.sock');
      const config = await writeConfig(tmp.dir, {
        stateDir: './state',
        apps: [webApp({ release: v1, listeners: [{ name: 'http', unix: sock }] })],
      });
      const agent = await startAgent(config);
      try {
        const body = await new Promise<string>((resolve, reject) => {
          const c = net.connect(sock, () =>
            c.end('GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'),
          );
          let data = '';
          c.setEncoding('utf8').on('data', (d: string) => (data += d));
          c.on('end', () => resolve(data));
          c.on('error', reject);
        });
        assert.match(body, /\r\n\r\nv1 1 /);
      } finally {
        await agent.stop();
      }
      const v6 = await openListener({
        name: 'v6',
        tcp: { host: '::1', port: 0, family: 6 },
        backlog: 16,
      });
      assert.match(v6.address, /^\[::1\]:\d+$/);
      v6.close();
    } finally {
      await tmp.cleanup();
    }
  });
});

describe('a stop asked for while the agent starts', () => {
  it('waits for the apps to start, then drains them: no generation is left behind', async () => {
    const tmp = await tempDir();
    try {
      const [v1] = await releases(tmp.dir, 'v1');
      const config = await writeConfig(tmp.dir, {
        stateDir: './state',
        apps: [webApp({ release: v1, env: { FIXTURE_START_DELAY_MS: '1500' } })],
      });
      const agent = await startAgent(config, { expectFailure: true });
      const started = await agent.waitFor(
        (r) => r.phase === 'generation-started',
        'generation started',
      );
      agent.proc.kill('SIGTERM');
      assert.equal(await withDeadline(agent.exited, 'agent exit'), 0);
      await waitGone(started.pid as number);
    } finally {
      await tmp.cleanup();
    }
  });
});
