import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { controlRequest } from '../src/cli/control-client.js';
import type { DeployResult } from '../src/supervisor/app-supervisor.js';
import {
  FIXTURES,
  listenerPort,
  releases,
  startAgent,
  webApp,
  withDeadline,
  writeConfig,
  type RunningAgent,
} from '../test/support/harness.js';

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
  const config = await writeConfig(dir, { stateDir: './state', apps: [webApp({ release: v1 })] });
  const agent = await startAgent(config);
  const status = await withDeadline(
    controlRequest(agent.socket, { method: 'status' }),
    'agent status',
  ).catch(async (err: unknown) => {
    await agent.stop();
    throw err;
  });
  let next = v2!;
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
      next = releaseDir === v1 ? v2! : v1!;
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
