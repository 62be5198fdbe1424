import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import {
  chmod,
  lstat,
  mkdir,
  readdir,
  readFile,
  readlink,
  stat,
  symlink,
  unlink,
  writeFile,
} from 'node:fs/promises';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { gunzipSync } from 'node:zlib';
import { describe, it } from 'node:test';
import { controlRequest } from '../../src/cli/control-client.js';
import type { SupervisorEvent } from '../../src/protocol/events.js';
import type { StoreDeployResult } from '../../src/supervisor/agent.js';
import type { AppStatus } from '../../src/supervisor/app-status.js';
import { isAlive } from '../../src/supervisor/process-util.js';
import { releases, webApp, writeConfig } from '../../support/agent-config.js';
import { type RunningAgent, startAgent } from '../../support/agent-process.js';
import { batonAsync, batonSync } from '../../support/baton-cli.js';
import { control, controlError, listenerPort } from '../../support/control.js';
import { waitUntil, withDeadline } from '../../support/deadline.js';
import { get } from '../../support/http-get.js';
import { startLoad } from '../../support/load-client.js';
import { FIXTURES } from '../../support/paths.js';
import { tempDir } from '../../support/temp-dir.js';
import { errorCodeOf, outcomeOf } from '../support/cli-output.js';
import { gatedHook } from '../support/gates.js';

const run = promisify(execFile);
const PROBE = path.join(FIXTURES, 'privileged-probe.mjs');
/** nobody / nogroup and users on Debian. */
const NOBODY = 65534;
const USERS_GID = 100;

interface Whoami {
  uid: number;
  gid: number;
  euid: number;
  groups: number[];
  umask: string;
  openFiles: { soft: number; hard: number };
  user: string;
  home: string;
  releaseDir: string;
  writeRelease: string;
}

/**
 * A temp dir the app's user can pass through: mkdtemp makes it 0700, and the releases, fixture
 * files and env files the tests write under it must be reachable by `nobody`.
 */
async function passableTempDir(): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const tmp = await tempDir('baton-least-privilege-');
  await chmod(tmp.dir, 0o755);
  return tmp;
}

/** The `web` app as the probe fixture, run as `nobody` (webApp's allowRoot switched off). */
function probeApp(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return webApp({
    command: ['node', PROBE],
    allowRoot: false,
    user: 'nobody',
    drain: { timeoutMs: 10_000 },
    ...overrides,
  });
}

/** Writes a file only its owner (root, the agent) can read or write, as an env file should be. */
async function writePrivate(file: string, text: string): Promise<void> {
  await writeFile(file, text, { mode: 0o600 });
  await chmod(file, 0o600);
}

interface Probe {
  dir: string;
  stateDir: string;
  configFile: string;
  agent: RunningAgent;
  port: number;
  /** The release the agent starts from: a plain directory, not in the store. */
  r0: string;
  keyFile: string;
  /** `--agent ws://… --token-file …` when started with a channel. */
  direct: string[];
  /** Writes the source tree of release `id` (probe command, a VERSION, `files`) and returns it. */
  source(id: string, files?: Record<string, string>): Promise<string>;
  /** Packs and signs `source(id, files)`: the archive and manifest a store deploy takes. */
  pack(id: string, files?: Record<string, string>): Promise<{ archive: string; manifest: string }>;
  /** Packs release `id` and deploys it into the store through the control socket. */
  deployArtifact(id: string, files?: Record<string, string>): Promise<StoreDeployResult>;
  status(): Promise<AppStatus>;
  whoami(): Promise<Whoami>;
  cleanup(): Promise<void>;
}

/**
 * An agent serving the probe as `web` from a plain release r0, trusting a fresh signing key, with
 * a channel when asked. `prepare` writes what the config refers to (an env file) first; relative
 * paths in `app` are relative to the temp dir, where the config is.
 */
async function startProbe(
  app: Record<string, unknown>,
  opts: { channel?: boolean; prepare?: (dir: string) => Promise<void> } = {},
): Promise<Probe> {
  const tmp = await passableTempDir();
  try {
    const keys = path.join(tmp.dir, 'keys');
    const k = batonSync(['keygen', '--out', keys]);
    assert.equal(k.status, 0, k.stderr);
    const publicKey = (await readFile(path.join(keys, 'baton.pub'), 'utf8')).trim();
    const keyFile = path.join(keys, 'baton.key');
    const tokenFile = path.join(tmp.dir, 'token');
    if (opts.channel) {
      const t = batonSync(['agent', 'token', '--out', tokenFile]);
      assert.equal(t.status, 0, t.stderr);
    }
    const [r0] = await releases(tmp.dir, 'r0');
    await opts.prepare?.(tmp.dir);
    const configFile = await writeConfig(tmp.dir, {
      stateDir: './state',
      trustedKeys: [publicKey],
      apps: [probeApp({ release: r0, ...app })],
      ...(opts.channel && {
        channel: { socket: path.join(tmp.dir, 'channel.sock'), port: 0, tokenFile },
      }),
    });
    const agent = await startAgent(configFile);
    let channelPort = 0;
    if (opts.channel)
      channelPort = (
        await agent.waitFor(
          (r) => r.type === 'channel' && typeof r.port === 'number',
          'channel listening',
        )
      ).port as number;
    const port = listenerPort((await control(agent.socket, { method: 'status' })).result);
    const out = path.join(tmp.dir, 'out');
    const probe: Probe = {
      dir: tmp.dir,
      stateDir: path.join(tmp.dir, 'state'),
      configFile,
      agent,
      port,
      r0: r0!,
      keyFile,
      direct: ['--agent', `ws://127.0.0.1:${channelPort}`, '--token-file', tokenFile],
      async source(id, files = {}) {
        const src = path.join(tmp.dir, 'src', id);
        await mkdir(src, { recursive: true });
        await writeFile(path.join(src, 'baton.yml'), `command: [node, ${JSON.stringify(PROBE)}]\n`);
        // Content of its own: packing is reproducible, so equal trees would be one artifact.
        await writeFile(path.join(src, 'VERSION'), `${id}\n`);
        for (const [name, data] of Object.entries(files)) {
          await mkdir(path.dirname(path.join(src, name)), { recursive: true });
          await writeFile(path.join(src, name), data);
        }
        return src;
      },
      async pack(id, files) {
        const src = await probe.source(id, files);
        const p = batonSync([
          'pack',
          src,
          '--app',
          'web',
          '--out',
          out,
          '--release-id',
          id,
          '--key',
          keyFile,
        ]);
        assert.equal(p.status, 0, p.stderr);
        return {
          archive: path.join(out, `${id}.tar.gz`),
          manifest: path.join(out, `${id}.manifest.json`),
        };
      },
      async deployArtifact(id, files) {
        const a = await probe.pack(id, files);
        const { result } = await control(agent.socket, {
          method: 'deploy-artifact',
          app: 'web',
          archive: a.archive,
          manifest: a.manifest,
        });
        return result as StoreDeployResult;
      },
      async status() {
        const { result } = await control(agent.socket, { method: 'status' });
        return (result as { apps: AppStatus[] }).apps.find((a) => a.name === 'web')!;
      },
      async whoami() {
        const res = await get(port, '/whoami');
        assert.equal(res.status, 200, res.body);
        return JSON.parse(res.body) as Whoami;
      },
      async cleanup() {
        await agent.stop();
        await tmp.cleanup();
      },
    };
    return probe;
  } catch (err) {
    await tmp.cleanup();
    throw err;
  }
}

/** Every regular file under `dir`, links not followed. */
async function filesUnder(dir: string): Promise<string[]> {
  const found: string[] = [];
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  for (const e of entries) {
    const full = path.join(dir, e.name);
    if (e.isDirectory()) found.push(...(await filesUnder(full)));
    else if (e.isFile()) found.push(full);
  }
  return found;
}

/** The files under `dir` whose bytes (gunzipped, for archives) contain `needle`. */
async function filesContaining(dir: string, needle: string, skip: RegExp): Promise<string[]> {
  const hits: string[] = [];
  for (const file of await filesUnder(dir)) {
    if (skip.test(file)) continue;
    let bytes = await readFile(file);
    if (file.endsWith('.gz')) bytes = gunzipSync(bytes);
    if (bytes.includes(needle)) hits.push(file);
  }
  return hits;
}

/** `baton agent run` on a config it must refuse: its exit code and the error it printed. */
async function refusedRun(configFile: string): Promise<{ code: number | null; stderr: string }> {
  const run = batonAsync(['agent', 'run', '--config', configFile]);
  const { code, stderr } = await run.done;
  return { code, stderr };
}

/** A command that leaves `marker` behind if the app is ever started, then runs the probe. */
function markingCommand(marker: string): string[] {
  return ['/bin/sh', '-c', 'touch "$0"; exec node "$1"', marker, PROBE];
}

async function exists(file: string): Promise<boolean> {
  return (await lstat(file).catch(() => undefined)) !== undefined;
}

describe('apps run with least privilege', () => {
  it('an app with user nobody serves through a deploy with 0 failures, as its configured uid, groups, umask and limits, and cannot write its release; its hooks run as nobody too', async () => {
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
        await waitUntil(() => !isAlive(successor!), 'the new agent to stop');
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

  it('an app whose shared area holds a symlink out is refused at its start with one clear error, keeps no other app from running nor an agent upgrade, and starts again by itself once mended', async () => {
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
          await waitUntil(() => !isAlive(successor!), 'the new agent to stop');
        }
      }
    } finally {
      await tmp.cleanup();
    }
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

  it('a secret from the env file reaches the app, and its value shows nowhere else: events, agent output, status, errors, artifacts', async () => {
    const secret = `s3cr3t-${randomBytes(12).toString('hex')}`;
    const sha = createHash('sha256').update(secret).digest('hex');
    const probe = await startProbe(
      {
        envFile: './web.env',
        secretEnv: ['DB_PASSWORD'],
        env: { DB_PASSWORD_SHA256: sha, PROBE_PRINT_SECRET: '1' },
        hooks: { beforeRestart: 'echo "hook sees $DB_PASSWORD"' },
      },
      {
        channel: true,
        prepare: (dir) => writePrivate(path.join(dir, 'web.env'), `DB_PASSWORD=${secret}\n`),
      },
    );
    try {
      assert.equal((await get(probe.port, '/secret')).body, 'match\n');

      // A good deploy through the channel: the hook echoes the secret, the app prints it.
      const good = await batonAsync([
        'deploy',
        await probe.source('v1'),
        '--app',
        'web',
        '--key',
        probe.keyFile,
        '--release-id',
        'v1',
        '--json',
        ...probe.direct,
      ]).done;
      assert.equal(good.code, 0, good.stderr);
      assert.equal(outcomeOf(good.stdout).ok, true);
      assert.match(good.stdout, /hook sees \*\*\*/);
      assert.equal((await get(probe.port, '/secret')).body, 'match\n');

      // A release whose generation prints the secret and exits before it is ready.
      const bad = await batonAsync([
        'deploy',
        await probe.source('v2', { mode: 'fail-printing-secret\n' }),
        '--app',
        'web',
        '--key',
        probe.keyFile,
        '--release-id',
        'v2',
        '--json',
        ...probe.direct,
      ]).done;
      assert.notEqual(bad.code, 0);
      const outcome = outcomeOf(bad.stdout);
      assert.equal(outcome.ok, false);
      assert.equal(outcome.error?.code, 'GENERATION_EXITED');
      assert.match(bad.stdout + bad.stderr, /DB_PASSWORD=\*\*\*|password \*\*\*/);

      // The same through the control socket, from a plain directory.
      const [v3] = await releases(probe.dir, 'v3');
      await writeFile(path.join(v3!, 'mode'), 'fail-printing-secret\n');
      const controlEvents: SupervisorEvent[] = [];
      const err = await withDeadline(
        controlRequest(probe.agent.socket, { method: 'deploy', app: 'web', releaseDir: v3! }, (e) =>
          controlEvents.push(e),
        ).then(
          () => assert.fail('the failing release was deployed'),
          (e: unknown) => e as { code: string; message: string; lines: readonly string[] },
        ),
        'the control deploy to fail',
      );
      assert.equal(err.code, 'GENERATION_EXITED');
      assert.ok(controlEvents.some((e) => e.type === 'log' && e.line === 'hook sees ***'));
      assert.ok(
        err.lines.some((l) => l.includes('***')),
        `the error's lines show *** for it:\n${err.lines.join('\n')}`,
      );
      const asked = await get(probe.port, '/print-secret');
      assert.equal(asked.status, 200);
      await probe.agent.waitFor(
        (r) => r.type === 'log' && String(r.line).startsWith('asked to print'),
        'the app to print the secret on request',
      );

      const status = batonSync(['agent', 'status', '--config', probe.configFile]);
      const statusJson = batonSync(['agent', 'status', '--json', '--config', probe.configFile]);
      const listed = batonSync(['releases', '--app', 'web', '--json', ...probe.direct]);
      assert.equal(status.status, 0, status.stderr);
      assert.equal(statusJson.status, 0, statusJson.stderr);
      assert.equal(listed.status, 0, listed.stderr);

      const seen: Record<string, string> = {
        'channel deploy (good)': good.stdout + good.stderr,
        'channel deploy (failing)': bad.stdout + bad.stderr,
        'control error': [err.message, ...err.lines].join('\n'),
        'control events': JSON.stringify(controlEvents),
        'agent status': status.stdout + status.stderr,
        'agent status --json': statusJson.stdout + statusJson.stderr,
        'releases --json': listed.stdout + listed.stderr,
        'agent stdout and stderr': probe.agent.output.join('\n'),
      };
      for (const [where, text] of Object.entries(seen))
        assert.ok(!text.includes(secret), `the secret shows in ${where}:\n${text}`);
      assert.match(probe.agent.output.join('\n'), /asked to print DB_PASSWORD=\*\*\*/);
      assert.match(probe.agent.output.join('\n'), /hook sees \*\*\*/);

      // Nor on disk, where the agent writes (the generations' own output files aside: those are
      // what the app itself printed): state, audit, store records, artifacts, releases.
      const scanned = await filesUnder(probe.stateDir);
      assert.ok(
        scanned.some((f) => f.endsWith('.tar.gz')) && scanned.some((f) => f.endsWith('/VERSION')),
      );
      const leaks = await filesContaining(probe.stateDir, secret, /\/logs\/web\.gen-\d+\.log$/);
      assert.deepEqual(leaks, []);
      const sources = await filesContaining(path.join(probe.dir, 'src'), secret, /^$/);
      assert.deepEqual(sources, []);
    } finally {
      await probe.cleanup();
    }
  });

  it('an app over its memory ceiling is restarted through a handover, with 0 failed requests', async () => {
    const probe = await startProbe({
      limits: { memoryBytes: 120 * 2 ** 20, memoryCheckMs: 200 },
    });
    try {
      const first = await probe.status();
      const oldPid = first.generation!.pid;
      const traffic = startLoad(probe.port, { workers: 2, keepAlive: false, maxRequests: 50_000 });
      const grown = await get(probe.port, '/grow');
      assert.equal(grown.status, 200, grown.body);
      await probe.agent.waitFor(
        (r) => r.type === 'phase' && r.phase === 'switched' && r.generation === 2,
        'generation 2 to take over',
      );
      const drained = await probe.agent.waitFor(
        (r) => r.type === 'phase' && r.phase === 'drained' && r.generation === 1,
        'generation 1 to be drained',
      );
      const served = await traffic.stop();
      assert.deepEqual(served.errors, {});
      assert.equal(served.non2xx, 0);
      assert.ok(served.ok > 0);
      assert.doesNotMatch(String(drained.detail), /killed/);
      assert.ok(
        probe.agent.events.some(
          (e) => e.type === 'log' && e.source === 'gen-1:notify' && /memory ceiling/.test(e.line),
        ),
        'the agent says why',
      );
      assert.ok(
        !probe.agent.events.some((e) => e.type === 'phase' && e.phase === 'crashed'),
        'a handover, not a crash',
      );
      const now = await probe.status();
      assert.equal(now.generation?.number, 2);
      assert.notEqual(now.generation?.pid, oldPid);
      assert.equal(now.release?.id, 'r0');
      assert.equal(isAlive(oldPid), false);
      assert.match((await get(probe.port)).body, /^r0 2 /);
      assert.equal((await probe.whoami()).uid, NOBODY);
    } finally {
      await probe.cleanup();
    }
  });
});

describe('the memory ceiling, when the restart has to wait', () => {
  it('a generation that grew over it during a deploy that then failed is restarted after all', async () => {
    const tmpGate = await passableTempDir();
    const gate = gatedHook(tmpGate.dir, 'gate');
    const probe = await startProbe({
      limits: { memoryBytes: 120 * 2 ** 20, memoryCheckMs: 200 },
      restart: { maxBackoffMs: 500 },
      hooks: { beforeRestart: gate.hook },
    });
    try {
      // A release whose generation exits at once: its deploy fails, generation 1 serves on.
      const [bad] = await releases(probe.dir, 'bad');
      await writeFile(path.join(bad!, 'baton.yml'), "command: [/bin/sh, -c, 'exit 3']\n");
      const deploying = controlError(probe.agent.socket, {
        method: 'deploy',
        app: 'web',
        releaseDir: bad!,
      });
      await probe.agent.waitFor(
        (r) => r.type === 'phase' && r.phase === 'hook-started' && r.hook === 'beforeRestart',
        'the deploy to reach its hook',
      );
      // Over the ceiling while the deploy runs: the restart has to wait for it.
      assert.equal((await get(probe.port, '/grow')).status, 200);
      await probe.agent.waitFor(
        (r) =>
          r.type === 'log' && r.source === 'gen-1:notify' && /memory ceiling/.test(String(r.line)),
        'the agent to see it',
      );
      await gate.open();
      assert.equal((await deploying).code, 'GENERATION_EXITED');
      await probe.agent.waitFor(
        (r) => r.type === 'phase' && r.phase === 'switched' && r.generation === 3,
        'the memory restart, once the deploy is over',
      );
      await probe.agent.waitFor(
        (r) => r.type === 'phase' && r.phase === 'drained' && r.generation === 1,
        'generation 1 to be drained',
      );
      assert.match((await get(probe.port)).body, /^r0 3 /);
    } finally {
      await probe.cleanup();
      await tmpGate.cleanup();
    }
  });
});

describe('secret masking beyond a single deploy', () => {
  const secretEnvFile = (secret: string) => (dir: string) =>
    writePrivate(path.join(dir, 'web.env'), `DB_PASSWORD=${secret}\n`);
  const secretApp = { envFile: './web.env', secretEnv: ['DB_PASSWORD'] };

  it(
    'a first generation that fails at agent start, printing the secret: the agent exits saying *** instead',
    {},
    async () => {
      const secret = `s3cr3t-${randomBytes(12).toString('hex')}`;
      const tmp = await passableTempDir();
      try {
        const [r0] = await releases(tmp.dir, 'r0');
        await writeFile(path.join(r0!, 'mode'), 'fail-printing-secret\n');
        await secretEnvFile(secret)(tmp.dir);
        const configFile = await writeConfig(tmp.dir, {
          stateDir: './state',
          apps: [probeApp({ release: r0, ...secretApp })],
        });
        const { code, stderr } = await refusedRun(configFile);
        assert.notEqual(code, 0);
        assert.equal(errorCodeOf(stderr), 'GENERATION_EXITED', stderr);
        assert.ok(!stderr.includes(secret), `the secret shows in the agent's error:\n${stderr}`);
        assert.match(stderr, /\*\*\*/);
      } finally {
        await tmp.cleanup();
      }
    },
  );

  it('after an agent upgrade, what the adopted generation prints is still masked', async () => {
    const secret = `s3cr3t-${randomBytes(12).toString('hex')}`;
    const probe = await startProbe(secretApp, { prepare: secretEnvFile(secret) });
    let successor: number | undefined;
    try {
      const { result } = await control(probe.agent.socket, { method: 'upgrade' });
      successor = (result as { pid: number }).pid;
      await withDeadline(probe.agent.exited, 'the old agent to exit');
      assert.equal((await get(probe.port, '/print-secret')).status, 200);
      // The new agent's output goes to <stateDir>/agent.log.
      const agentLog = path.join(probe.stateDir, 'agent.log');
      await waitUntil(
        async () => (await readFile(agentLog, 'utf8')).includes('asked to print'),
        'the adopted generation to print, through the new agent',
      );
      const text = await readFile(agentLog, 'utf8');
      assert.ok(!text.includes(secret), `the secret shows in the new agent's log:\n${text}`);
    } finally {
      if (successor !== undefined && isAlive(successor)) {
        process.kill(successor, 'SIGTERM');
        await waitUntil(() => !isAlive(successor!), 'the new agent to stop');
      }
      await probe.cleanup();
    }
  });

  it('a rotated secret: what the old generation prints of the old value, while the deploy runs, is still masked', async () => {
    const oldSecret = `old-${randomBytes(12).toString('hex')}`;
    const newSecret = `new-${randomBytes(12).toString('hex')}`;
    const tmpGate = await passableTempDir();
    const gate = gatedHook(tmpGate.dir, 'gate');
    const probe = await startProbe(
      { ...secretApp, hooks: { beforeRestart: gate.hook } },
      { prepare: secretEnvFile(oldSecret) },
    );
    try {
      const [v2] = await releases(probe.dir, 'v2');
      await secretEnvFile(newSecret)(probe.dir);
      const deploying = control(probe.agent.socket, {
        method: 'deploy',
        app: 'web',
        releaseDir: v2!,
      });
      await probe.agent.waitFor(
        (r) => r.type === 'phase' && r.phase === 'hook-started' && r.hook === 'beforeRestart',
        'the deploy to reach its hook',
      );
      // Generation 1, started with the old value, still serves: it prints it now.
      assert.equal((await get(probe.port, '/print-secret')).status, 200);
      const line = await probe.agent.waitFor(
        (r) => r.type === 'log' && r.source === 'gen-1' && String(r.line).startsWith('asked'),
        'generation 1 to print',
      );
      await gate.open();
      await deploying;
      assert.ok(!String(line.line).includes(oldSecret), `unmasked: ${String(line.line)}`);
      assert.ok(!probe.agent.output.join('\n').includes(oldSecret));
    } finally {
      await probe.cleanup();
      await tmpGate.cleanup();
    }
  });
});
