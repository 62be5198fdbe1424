import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmod, copyFile, stat } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { controlRequest } from '../src/cli/control-client.js';
import type { DeployResult } from '../src/protocol/results.js';
import { releases, webApp, writeConfig } from '../support/agent-config.js';
import { type RunningAgent, startAgent } from '../support/agent-process.js';
import { listenerPort } from '../support/control.js';
import { withDeadline } from '../support/deadline.js';
import { FIXTURES, ROOT } from '../support/paths.js';

/** Something serving the fixture app on 127.0.0.1:port that can be cycled to a new process. */
export interface Contestant {
  port: number;
  /** One handover (baton) or stop-then-start (naive); throws when it did not happen cleanly. */
  cycle(): Promise<void>;
  close(): Promise<void>;
}

export const FIXTURE_APP = path.join(FIXTURES, 'app.mjs');
const DEADLINE_MS = 30_000;

/** The fixture app under a real `baton agent run`; each cycle deploys the other of two releases. */
export async function startBaton(dir: string): Promise<Contestant & { agent: RunningAgent }> {
  const [v1, v2] = await releases(dir, 'v1', 'v2');
  return underAgent(dir, webApp({ release: v1 }), v1!, v2!);
}

/**
 * An app config under a real `baton agent run` (writes `dir/agent.json`, state in `dir/state`);
 * each cycle deploys the other of two release directories and must be a clean handover.
 */
async function underAgent(
  dir: string,
  app: Record<string, unknown>,
  v1: string,
  v2: string,
): Promise<Contestant & { agent: RunningAgent }> {
  const config = await writeConfig(dir, { stateDir: './state', apps: [app] });
  const agent = await startAgent(config);
  const status = await withDeadline(
    controlRequest(agent.socket, { method: 'status' }),
    'agent status',
  ).catch(async (err: unknown) => {
    await agent.stop();
    throw err;
  });
  let next = v2;
  return {
    agent,
    port: listenerPort(status),
    cycle: async () => {
      const releaseDir = next;
      const result = (await withDeadline(
        controlRequest(agent.socket, { method: 'deploy', app: 'web', releaseDir }),
        `deploy ${releaseDir}`,
        DEADLINE_MS,
      )) as DeployResult;
      next = releaseDir === v1 ? v2 : v1;
      if (result.cold || result.drained !== 'exited')
        throw new Error(
          `deploy of ${result.releaseId} was not a clean handover: cold=${result.cold}, old generation ${result.drained}`,
        );
    },
    close: async () => {
      await agent.stop();
    },
  };
}

/** The Python whose packages hold Debian's python3-gunicorn (not a pyenv or venv one on PATH). */
export const GUNICORN_PYTHON = process.env.BENCH_GUNICORN_PYTHON || '/usr/bin/python3';
export const GUNICORN_APP = path.join(ROOT, 'bench/fixtures/gunicorn_app.py');
/** The user gunicorn runs as; its release directories must be readable to it. */
const GUNICORN_USER = 'nobody';
/** gunicorn's own drain (`--graceful-timeout`); the agent's drain deadline is longer. */
const GUNICORN_GRACE_SECONDS = 10;

/** gunicorn's version, or an error that says how to install it. */
export function gunicornVersion(): string {
  const probe = spawnSync(GUNICORN_PYTHON, ['-c', 'import gunicorn; print(gunicorn.__version__)'], {
    encoding: 'utf8',
    timeout: 30_000,
  });
  if (probe.status !== 0)
    throw new Error(
      `${GUNICORN_PYTHON} cannot import gunicorn (${(probe.stderr || probe.error?.message || '').trim().split('\n').pop()}); ` +
        'install it with apt-get install python3-gunicorn (or set BENCH_GUNICORN_PYTHON to a Python that has it, ' +
        'or BENCH_GUNICORN=0 to leave the gunicorn rows out)',
    );
  return probe.stdout.trim();
}

/**
 * Unmodified gunicorn (sync workers) under a real `baton agent run`: it takes the listener from
 * LISTEN_FDS and says READY=1 on the generation's NOTIFY_SOCKET (readiness type `systemd`). Each
 * release directory holds the same WSGI app file, as a real release would.
 */
export async function startGunicorn(dir: string): Promise<Contestant & { agent: RunningAgent }> {
  const [g1, g2] = await releases(dir, 'g1', 'g2');
  for (const r of [g1!, g2!]) await copyFile(GUNICORN_APP, path.join(r, 'gunicorn_app.py'));
  // Passable to the app's user down to its releases (a temp dir is 0700).
  for (let d = dir; d.startsWith(`${os.tmpdir()}${path.sep}`); d = path.dirname(d))
    await chmod(d, (await stat(d)).mode | 0o111);
  const app = webApp({
    release: g1,
    command: [
      GUNICORN_PYTHON,
      '-m',
      'gunicorn',
      '--workers',
      '2',
      '--graceful-timeout',
      String(GUNICORN_GRACE_SECONDS),
      'gunicorn_app:app',
    ],
    readiness: { type: 'systemd', timeoutMs: 30_000 },
    drain: { signal: 'SIGTERM', timeoutMs: (GUNICORN_GRACE_SECONDS + 5) * 1000 },
    // Python would write __pycache__ into the release directory; releases stay as shipped.
    env: { PYTHONDONTWRITEBYTECODE: '1' },
    // As an app should run: as a user of its own, not root (nobody, here).
    user: GUNICORN_USER,
  });
  return underAgent(dir, app, g1!, g2!);
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Starts the fixture on its own (it binds PORT itself) and resolves once it says it serves. */
async function startApp(port: number): Promise<ChildProcess> {
  const env: NodeJS.ProcessEnv = { ...process.env, PORT: String(port), BATON_RELEASE_ID: 'naive' };
  for (const key of [
    'LISTEN_FDS',
    'LISTEN_FDNAMES',
    'LISTEN_PID',
    'BATON_NOTIFY_FD',
    'BATON_HEALTH_PORT',
  ])
    delete env[key];
  const child = spawn(process.execPath, [FIXTURE_APP], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const serving = new Promise<void>((resolve, reject) => {
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      output += d;
      if (output.includes('serving')) resolve();
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => (output += d));
    child.once('error', reject);
    child.once('exit', (code, signal) =>
      reject(new Error(`naive app exited (${signal ?? code}) before serving:\n${output}`)),
    );
  });
  await withDeadline(serving, 'naive app to serve', DEADLINE_MS).catch((err: unknown) => {
    stopApp(child, 0).catch(() => undefined);
    throw err;
  });
  return child;
}

/** SIGTERM by pid, wait for the exit; SIGKILL after `graceMs`. */
async function stopApp(child: ChildProcess, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  process.kill(child.pid, 'SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const killed = new Promise<void>((resolve) => {
    timer = setTimeout(() => {
      if (child.exitCode === null && child.signalCode === null) process.kill(child.pid!, 'SIGKILL');
      resolve();
    }, graceMs);
  });
  await Promise.race([exited, killed]);
  clearTimeout(timer);
  await withDeadline(exited, `naive app pid ${child.pid} to exit`);
}

/** The same fixture, restarted the naive way: stop it (it drains gracefully on SIGTERM), then start a new one. */
export async function startNaive(): Promise<Contestant & { pid(): number | undefined }> {
  const port = await freePort();
  let app = await startApp(port);
  return {
    port,
    pid: () => app.pid,
    cycle: async () => {
      await stopApp(app, 15_000);
      app = await startApp(port);
    },
    close: () => stopApp(app, 15_000),
  };
}
