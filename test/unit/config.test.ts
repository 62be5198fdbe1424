import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BatonError } from '../../src/errors.js';
import { loadAgentConfig, parseAgentConfig } from '../../src/supervisor/config.js';
import { type AgentConfig } from '../../src/protocol/agent-config.js';
import { tempDir } from '../../support/temp-dir.js';

const SOURCE = '/etc/baton/agent.yml';

function app(
  overrides: Record<string, unknown> = {},
  listener: Record<string, unknown> = { name: 'http', tcp: '127.0.0.1:8080' },
) {
  return { name: 'web', command: ['node', 'server.js'], listeners: [listener], ...overrides };
}

function config(...apps: Record<string, unknown>[]): Record<string, unknown> {
  return { stateDir: '/var/lib/baton', apps: apps.length ? apps : [app()] };
}

/** Parses and expects CONFIG_INVALID; returns the error for its message. */
function invalid(raw: unknown): BatonError {
  let parsed: AgentConfig;
  try {
    parsed = parseAgentConfig(raw, SOURCE);
  } catch (err) {
    assert.ok(err instanceof BatonError, `not a BatonError: ${String(err)}`);
    assert.equal(err.code, 'CONFIG_INVALID', err.message);
    return err;
  }
  assert.fail(
    `CONFIG_INVALID expected, but it parsed; listeners: ${JSON.stringify(parsed.apps.map((a) => a.listeners))}`,
  );
}

function assertNames(err: BatonError, ...parts: string[]): void {
  for (const part of parts)
    assert.ok(err.message.includes(part), `message does not name ${part}: ${err.message}`);
}

function tcpOf(
  address: string,
): NonNullable<AgentConfig['apps'][number]['listeners'][number]['tcp']> {
  const cfg = parseAgentConfig(config(app({}, { name: 'http', tcp: address })), SOURCE);
  return cfg.apps[0]!.listeners[0]!.tcp!;
}

describe('parseAgentConfig', () => {
  describe('unknown fields are errors that name where they are', () => {
    it('at the top level', () => {
      const err = invalid({ ...config(), stateDirectory: '/tmp' });
      assertNames(err, 'stateDirectory');
    });

    it('inside an app', () => {
      const err = invalid(config(app({ colour: 'blue' })));
      assertNames(err, 'apps.0', 'colour');
    });

    it('inside a listener', () => {
      const err = invalid(config(app({}, { name: 'http', tcp: '127.0.0.1:8080', port: 8080 })));
      assertNames(err, 'apps.0.listeners.0', 'port');
    });

    it('inside an app setting (drain)', () => {
      const err = invalid(config(app({ drain: { timeout: 5 } })));
      assertNames(err, 'apps.0.drain', 'timeout');
    });

    it('a duration longer than a timer can wait (it would fire at once)', () => {
      const err = invalid(
        config(app({ readiness: { type: 'systemd', timeoutMs: 1000, watchdogMs: 2 ** 31 } })),
      );
      assertNames(err, 'apps.0.readiness.watchdogMs', '24.8 days');
      assertNames(invalid(config(app({ drain: { timeoutMs: 3e12 } }))), 'apps.0.drain.timeoutMs');
    });

    it("passEnv naming the agent's own activation (it would reach the app as the agent's)", () => {
      const err = invalid(config(app({ passEnv: ['AWS_REGION', 'NOTIFY_SOCKET'] })));
      assertNames(err, 'apps.0.passEnv.1', "agent's own activation");
      assertNames(invalid(config(app({ passEnv: ['LISTEN_FDS'] }))), 'apps.0.passEnv.0');
    });

    it('in the second app, with its index', () => {
      const err = invalid(config(app(), app({ name: 'api', listenrs: [] })));
      assertNames(err, 'apps.1', 'listenrs');
    });
  });

  describe('listeners', () => {
    for (const tcp of [
      'localhost:99999',
      '::1:8080',
      'host:',
      'localhost:http',
      '[::1]',
      '',
      '[::1]:',
    ]) {
      it(`rejects the TCP address ${JSON.stringify(tcp)}`, () => {
        const err = invalid(config(app({}, { name: 'http', tcp })));
        assertNames(err, 'apps.0.listeners.0.tcp');
      });
    }

    // A host with its port forgotten must not bind somewhere odd: "127.0.0.1" is not host 127.0.0. port 1.
    for (const tcp of ['127.0.0.1', 'localhost8080']) {
      it(`rejects ${JSON.stringify(tcp)}, a host without a port`, () => {
        const err = invalid(config(app({}, { name: 'http', tcp })));
        assertNames(err, 'apps.0.listeners.0.tcp');
      });
    }

    it('rejects a listener with both tcp and unix', () => {
      const err = invalid(
        config(app({}, { name: 'http', tcp: '127.0.0.1:8080', unix: '/run/web.sock' })),
      );
      assertNames(err, 'apps.0.listeners.0');
    });

    it('rejects a listener with neither tcp nor unix', () => {
      const err = invalid(config(app({}, { name: 'http' })));
      assertNames(err, 'apps.0.listeners.0');
    });

    it('rejects duplicate listener names in an app', () => {
      const err = invalid(
        config(
          app({
            listeners: [
              { name: 'http', tcp: '127.0.0.1:8080' },
              { name: 'http', tcp: '127.0.0.1:8081' },
            ],
          }),
        ),
      );
      assertNames(err, 'apps.0.listeners.1.name');
    });

    it('defaults the host of ":8080" to 127.0.0.1', () => {
      assert.deepEqual(tcpOf(':8080'), { host: '127.0.0.1', port: 8080, family: 4 });
    });

    it('defaults the host of a bare "8080" to 127.0.0.1', () => {
      assert.deepEqual(tcpOf('8080'), { host: '127.0.0.1', port: 8080, family: 4 });
    });

    it('parses host:port and [ipv6]:port', () => {
      assert.deepEqual(tcpOf('0.0.0.0:80'), { host: '0.0.0.0', port: 80, family: 4 });
      assert.deepEqual(tcpOf('localhost:0'), { host: 'localhost', port: 0, family: 4 });
      assert.deepEqual(tcpOf('[::1]:8080'), { host: '::1', port: 8080, family: 6 });
      assert.deepEqual(tcpOf('[::]:443'), { host: '::', port: 443, family: 6 });
    });
  });

  it('rejects duplicate app names, naming the second', () => {
    const err = invalid(
      config(app(), app({ listeners: [{ name: 'http', tcp: '127.0.0.1:9090' }] })),
    );
    assertNames(err, 'apps.1.name');
  });

  it('fills in the defaults', () => {
    const parsed = parseAgentConfig(config(), SOURCE).apps[0]!;
    assert.deepEqual(parsed.readiness, { type: 'notify', timeoutMs: 30_000 });
    assert.deepEqual(parsed.drain, { signal: 'SIGTERM', timeoutMs: 30_000 });
    assert.deepEqual(parsed.restart, {
      initialBackoffMs: 100,
      maxBackoffMs: 30_000,
      resetAfterMs: 30_000,
    });
    assert.deepEqual(parsed.hooks, {});
    assert.deepEqual(parsed.env, {});
    assert.equal(parsed.listeners[0]!.backlog, 511);
  });

  it('fills in the defaults inside settings given in part', () => {
    const parsed = parseAgentConfig(
      config(
        app({
          readiness: { type: 'notify' },
          drain: { timeoutMs: 5000 },
          hooks: { beforeRestart: 'npm run migrate' },
        }),
      ),
      SOURCE,
    ).apps[0]!;
    assert.deepEqual(parsed.readiness, { type: 'notify', timeoutMs: 30_000 });
    assert.deepEqual(parsed.drain, { signal: 'SIGTERM', timeoutMs: 5000 });
    assert.deepEqual(parsed.hooks.beforeRestart, { run: 'npm run migrate', timeoutMs: 60_000 });
    const http = parseAgentConfig(config(app({ readiness: { type: 'http' } })), SOURCE).apps[0]!
      .readiness;
    assert.deepEqual(http, { type: 'http', path: '/healthz', intervalMs: 100, timeoutMs: 30_000 });
  });

  it('resolves relative paths against the config file', () => {
    const parsed = parseAgentConfig(
      {
        stateDir: './state',
        apps: [app({ release: 'releases/v1' }, { name: 'sock', unix: 'run/web.sock' })],
      },
      SOURCE,
    );
    assert.equal(parsed.stateDir, '/etc/baton/state');
    assert.equal(parsed.apps[0]!.release, '/etc/baton/releases/v1');
    assert.equal(parsed.apps[0]!.listeners[0]!.unix, '/etc/baton/run/web.sock');
  });
});

describe('loadAgentConfig', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>;

  before(async () => {
    tmp = await tempDir('baton-config-');
  });
  after(async () => {
    await tmp?.cleanup();
  });

  it('gives CONFIG_UNREADABLE for a file that does not exist', async () => {
    await assert.rejects(loadAgentConfig(path.join(tmp.dir, 'missing.yml')), (err: unknown) => {
      assert.ok(err instanceof BatonError);
      assert.equal(err.code, 'CONFIG_UNREADABLE');
      return true;
    });
  });

  it('gives CONFIG_INVALID for malformed YAML', async () => {
    const file = path.join(tmp.dir, 'broken.yml');
    await writeFile(
      file,
      'stateDir: ./state\napps:\n  - name: web\n    command: [node, "server.js"\n',
    );
    await assert.rejects(loadAgentConfig(file), (err: unknown) => {
      assert.ok(err instanceof BatonError);
      assert.equal(err.code, 'CONFIG_INVALID');
      return true;
    });
  });

  it('gives CONFIG_INVALID for malformed JSON', async () => {
    const file = path.join(tmp.dir, 'broken.json');
    await writeFile(file, '{"stateDir": "./state",');
    await assert.rejects(loadAgentConfig(file), (err: unknown) => {
      assert.ok(err instanceof BatonError);
      assert.equal(err.code, 'CONFIG_INVALID');
      return true;
    });
  });

  it('gives CONFIG_INVALID naming an unknown field in a YAML file', async () => {
    const file = path.join(tmp.dir, 'typo.yml');
    await writeFile(
      file,
      'stateDir: ./state\napps:\n  - name: web\n    command: [node, server.js]\n    listeners:\n      - name: http\n        tcp: ":8080"\n        backlogg: 10\n',
    );
    await assert.rejects(loadAgentConfig(file), (err: unknown) => {
      assert.ok(err instanceof BatonError);
      assert.equal(err.code, 'CONFIG_INVALID');
      assertNames(err, 'apps.0.listeners.0', 'backlogg');
      return true;
    });
  });

  it('loads a valid YAML file, with paths relative to it', async () => {
    const file = path.join(tmp.dir, 'agent.yml');
    await writeFile(
      file,
      'stateDir: ./state\napps:\n  - name: web\n    command: [node, server.js]\n    listeners:\n      - name: http\n        tcp: "[::1]:8080"\n',
    );
    const cfg = await loadAgentConfig(file);
    assert.equal(cfg.stateDir, path.join(tmp.dir, 'state'));
    assert.deepEqual(cfg.apps[0]!.listeners[0]!.tcp, { host: '::1', port: 8080, family: 6 });
    assert.deepEqual(cfg.apps[0]!.readiness, { type: 'notify', timeoutMs: 30_000 });
  });
});
