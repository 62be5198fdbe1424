// Shared by the tests, the benches and the demo (see README.md in this folder).
import { spawn, spawnSync } from 'node:child_process';
import { withDeadline } from './deadline.js';
import { CLI } from './paths.js';

/** Runs the baton CLI synchronously; asserts nothing. */
export function batonSync(args: string[], env: NodeJS.ProcessEnv = {}) {
  return spawnSync(process.execPath, [CLI, ...args], {
    encoding: 'utf8',
    timeout: 120_000,
    env: { ...process.env, ...env },
  });
}

export interface CliRun {
  pid: number;
  /** stdout lines so far (JSON lines in --json mode). */
  lines: string[];
  stderr: string[];
  /** Resolves with the first stdout line that `pred` accepts. */
  waitLine(pred: (line: string) => boolean, what: string): Promise<string>;
  done: Promise<{ code: number | null; stdout: string; stderr: string }>;
}

/** Runs the baton CLI in the background, its output followed line by line. */
export function batonAsync(args: string[], env: NodeJS.ProcessEnv = {}): CliRun {
  const child = spawn(process.execPath, [CLI, ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  const stderr: string[] = [];
  const waiters: { pred: (l: string) => boolean; resolve: (l: string) => void }[] = [];
  let buf = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    buf += d;
    const parts = buf.split('\n');
    buf = parts.pop() ?? '';
    for (const line of parts) {
      lines.push(line);
      for (const w of [...waiters])
        if (w.pred(line)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(line);
        }
    }
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => stderr.push(d));
  const done = withDeadline(
    new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
      child.once('close', (code) =>
        resolve({ code, stdout: lines.join('\n') + buf, stderr: stderr.join('') }),
      ),
    ),
    `baton ${args.join(' ')}`,
    120_000,
  );
  return {
    pid: child.pid!,
    lines,
    stderr,
    waitLine: (pred, what) => {
      const found = lines.find(pred);
      if (found) return Promise.resolve(found);
      return withDeadline(
        new Promise<string>((resolve) => waiters.push({ pred, resolve })),
        `${what}\n${lines.slice(-20).join('\n')}\n${stderr.join('')}`,
      );
    },
    done,
  };
}
