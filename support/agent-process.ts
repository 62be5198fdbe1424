// Shared by the tests, the benches and the demo (see README.md in this folder).
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { SupervisorEvent } from '../src/protocol/events.js';
import { withDeadline } from './deadline.js';
import { CLI } from './paths.js';

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
  const config = JSON.parse(await readFile(configFile, 'utf8')) as { stateDir: string };
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
