import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { controlRequest } from '../../src/cli/control-client.js';
import type { SupervisorEvent } from '../../src/protocol/events.js';

/** The repository root, from build/test/support/. */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const CLI = path.join(ROOT, 'build/src/cli/main.js');
export const FIXTURES = path.join(ROOT, 'test/fixtures');

/** A generous deadline that only fails a hung test; never a timing assertion. */
export const HUNG_MS = 30_000;

export async function tempDir(
  prefix = 'baton-test-',
): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** Makes release directories (empty: the fixture command is an absolute path). */
export async function releases(dir: string, ...ids: string[]): Promise<string[]> {
  return Promise.all(
    ids.map(async (id) => {
      const r = path.join(dir, 'releases', id);
      await mkdir(r, { recursive: true });
      return r;
    }),
  );
}

export async function writeConfig(dir: string, config: unknown): Promise<string> {
  const file = path.join(dir, 'agent.json');
  await writeFile(file, JSON.stringify(config, null, 2));
  return file;
}

/** A config for one app named `web` with a fixture as its command. */
export function webApp(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    name: 'web',
    command: ['node', path.join(FIXTURES, 'app.mjs')],
    listeners: [{ name: 'http', tcp: '127.0.0.1:0' }],
    drain: { timeoutMs: 10_000 },
    // CI runs as root and these fixtures live in private temp dirs; the least-privilege tests
    // (least-privilege.test.ts) run apps as an unprivileged user instead.
    allowRoot: true,
    ...overrides,
  };
}

export interface RunningAgent {
  proc: ChildProcess;
  pid: number;
  events: SupervisorEvent[];
  output: string[];
  socket: string;
  /** Resolves with the first logged record matching, waiting for it if need be. */
  waitFor(
    pred: (rec: Record<string, unknown>) => boolean,
    what: string,
  ): Promise<Record<string, unknown>>;
  exited: Promise<number | null>;
  /** SIGTERM and wait for exit. */
  stop(): Promise<number | null>;
}

/** Runs `baton agent run` as a real child process and follows its JSON-lines log. */
export async function startAgent(
  configFile: string,
  opts: {
    env?: NodeJS.ProcessEnv;
    stdio?: (number | 'pipe' | 'ignore')[];
    expectFailure?: boolean;
    /** Variables set to the agent's own pid, as systemd sets WATCHDOG_PID. */
    ownPid?: string[];
    /** The agent's limit on open files (soft and hard: Node raises the soft one to the hard). */
    nofile?: number;
  } = {},
): Promise<RunningAgent> {
  const extra = opts.stdio ?? [];
  const argv = [process.execPath, CLI, 'agent', 'run', '--config', configFile];
  const names = opts.ownPid ?? [];
  const limit = opts.nofile !== undefined ? `ulimit -n ${opts.nofile}; ` : '';
  const vars = names.length
    ? `${names.map((n) => `${n}=$$`).join(' ')}; export ${names.join(' ')}; `
    : '';
  // Through a shell that execs: its $$ is the agent's pid.
  const [file, ...args] =
    limit || vars ? ['/bin/sh', '-c', `${limit}${vars}exec "$@"`, 'agent', ...argv] : argv;
  const proc = spawn(file!, args, {
    env: { ...process.env, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe', ...extra],
  });
  const records: Record<string, unknown>[] = [];
  const output: string[] = [];
  const waiters: {
    pred: (r: Record<string, unknown>) => boolean;
    resolve: (r: Record<string, unknown>) => void;
  }[] = [];
  let buffered = '';
  proc.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    buffered += chunk;
    const lines = buffered.split('\n');
    buffered = lines.pop() ?? '';
    for (const line of lines) {
      output.push(line);
      let rec: Record<string, unknown>;
      try {
        rec = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue;
      }
      records.push(rec);
      for (const w of [...waiters])
        if (w.pred(rec)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(rec);
        }
    }
  });
  proc
    .stderr!.setEncoding('utf8')
    .on('data', (chunk: string) => output.push(...chunk.trimEnd().split('\n')));
  const exited = new Promise<number | null>((resolve) =>
    proc.once('exit', (code) => resolve(code)),
  );
  const waitFor = (pred: (r: Record<string, unknown>) => boolean, what: string) => {
    const found = records.find(pred);
    if (found) return Promise.resolve(found);
    return withDeadline(
      new Promise<Record<string, unknown>>((resolve) => waiters.push({ pred, resolve })),
      `agent log: ${what}\n${output.slice(-30).join('\n')}`,
    );
  };
  const config = JSON.parse(
    await (await import('node:fs/promises')).readFile(configFile, 'utf8'),
  ) as { stateDir: string };
  const agent: RunningAgent = {
    proc,
    pid: proc.pid!,
    events: records.filter((r) => r.type === 'phase' || r.type === 'log') as SupervisorEvent[],
    output,
    socket: path.join(path.resolve(path.dirname(configFile), config.stateDir), 'agent.sock'),
    waitFor,
    exited,
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      try {
        return await withDeadline(exited, 'agent stop');
      } catch (err) {
        // A hung stop fails the test; it must not also leave the agent and its apps running.
        proc.kill('SIGKILL');
        await killRecordedGenerations(path.resolve(path.dirname(configFile), config.stateDir));
        throw err;
      }
    },
  };
  Object.defineProperty(agent, 'events', {
    get: () => records.filter((r) => r.type === 'phase' || r.type === 'log'),
  });
  if (!opts.expectFailure) {
    await Promise.race([
      waitFor((r) => r.type === 'agent' && r.msg === 'ready', 'ready'),
      exited.then((code) => {
        throw new Error(`agent exited (${code}) before ready:\n${output.join('\n')}`);
      }),
    ]);
  }
  return agent;
}

/** SIGKILL to the process group of each generation the agent's state file names. */
async function killRecordedGenerations(stateDir: string): Promise<void> {
  const { readFile } = await import('node:fs/promises');
  const text = await readFile(path.join(stateDir, 'state.json'), 'utf8').catch(() => '{}');
  const state = JSON.parse(text) as { apps?: Record<string, { generation?: { pid?: number } }> };
  for (const app of Object.values(state.apps ?? {})) {
    const pid = app.generation?.pid;
    if (!pid || pid <= 1) continue;
    for (const target of [-pid, pid]) {
      try {
        process.kill(target, 'SIGKILL');
      } catch {
        // Gone already.
      }
    }
  }
}

export function withDeadline<T>(promise: Promise<T>, what: string, ms = HUNG_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`hung waiting for ${what}`)), ms);
    }),
  ]);
}

/** One control request, with events collected. */
export async function control(
  socket: string,
  body: Parameters<typeof controlRequest>[1],
): Promise<{ result: unknown; events: SupervisorEvent[] }> {
  const events: SupervisorEvent[] = [];
  const result = await withDeadline(
    controlRequest(socket, body, (e) => events.push(e)),
    `control ${body.method}`,
  );
  return { result, events };
}

export async function controlError(
  socket: string,
  body: Parameters<typeof controlRequest>[1],
): Promise<{ code: string; message: string; lines: readonly string[] }> {
  try {
    await control(socket, body);
  } catch (err) {
    const e = err as { code: string; message: string; lines: readonly string[] };
    return { code: e.code, message: e.message, lines: e.lines ?? [] };
  }
  throw new Error(`control ${body.method} succeeded but was expected to fail`);
}

export function get(
  port: number,
  pathName = '/',
  agent: http.Agent | false = false,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: pathName, agent }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('error', reject);
  });
}

export interface LoadResult {
  sent: number;
  ok: number;
  non2xx: number;
  errors: Record<string, number>;
  bodies: Set<string>;
}

/**
 * Bounded load: `workers` loops sending GETs until `stop()` or `maxRequests`, counting every
 * failure by kind. Keep-alive (one agent per worker) or a new connection per request.
 */
export function load(
  port: number,
  opts: { workers: number; keepAlive: boolean; maxRequests?: number },
) {
  const result: LoadResult = { sent: 0, ok: 0, non2xx: 0, errors: {}, bodies: new Set() };
  let stopped = false;
  const max = opts.maxRequests ?? 200_000;
  const worker = async () => {
    const agent = opts.keepAlive ? new http.Agent({ keepAlive: true, maxSockets: 1 }) : false;
    while (!stopped && result.sent < max) {
      result.sent++;
      try {
        const res = await get(port, '/', agent);
        if (res.status >= 200 && res.status < 300) {
          result.ok++;
          result.bodies.add(res.body.split(' ')[0]!);
        } else result.non2xx++;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
        result.errors[code] = (result.errors[code] ?? 0) + 1;
      }
    }
    if (agent) agent.destroy();
  };
  const running = Promise.all(Array.from({ length: opts.workers }, worker));
  return {
    result,
    stop: async () => {
      stopped = true;
      await running;
      return result;
    },
  };
}

/** A loopback port free right now, for tests that need a fixed address across agents. */
export async function freePort(): Promise<number> {
  const net = await import('node:net');
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

export function listenerPort(status: unknown, app = 'web'): number {
  const s = status as { apps: { name: string; listeners: { address: string }[] }[] };
  const address = s.apps.find((a) => a.name === app)!.listeners[0]!.address;
  return Number(address.slice(address.lastIndexOf(':') + 1));
}

export interface WebAgent {
  agent: RunningAgent;
  /** The port of the `web` app's listener. */
  port: number;
  /** Release directories by id; the first one serves at start. */
  dirs: Record<string, string>;
  dir: string;
}

/**
 * Runs `fn` against a fresh agent serving the `web` app from the first of `ids` (with `app`
 * overriding its config), then stops the agent and removes every file.
 */
export async function withWebAgent(
  ids: string[],
  app: Record<string, unknown>,
  fn: (ctx: WebAgent) => Promise<void>,
): Promise<void> {
  const tmp = await tempDir();
  try {
    const made = await releases(tmp.dir, ...ids);
    const dirs = Object.fromEntries(ids.map((id, i) => [id, made[i]!]));
    const agent = await startAgent(
      await writeConfig(tmp.dir, {
        stateDir: './state',
        apps: [webApp({ release: made[0], ...app })],
      }),
    );
    try {
      const port = listenerPort((await control(agent.socket, { method: 'status' })).result);
      await fn({ agent, port, dirs, dir: tmp.dir });
    } finally {
      await agent.stop();
    }
  } finally {
    await tmp.cleanup();
  }
}
