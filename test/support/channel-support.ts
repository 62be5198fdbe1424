import { spawn, spawnSync } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { AgentStatus } from '../../src/protocol/results.js';
import {
  CLI,
  control,
  FIXTURES,
  listenerPort,
  releases,
  startAgent,
  tempDir,
  webApp,
  withDeadline,
  writeConfig,
  type RunningAgent,
} from './harness.js';

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

export interface ChannelAgent {
  dir: string;
  agent: RunningAgent;
  /** The agent's channel port on 127.0.0.1 (TCP, as these tests ask for explicitly). */
  channelPort: number;
  /** The agent's channel socket (in the temp dir, root only). */
  channelSocket: string;
  /** The `web` app's listener port. */
  appPort: number;
  token: string;
  tokenFile: string;
  keyFile: string;
  stateDir: string;
  /** `--agent ws://127.0.0.1:<port> --token-file <file>` */
  direct: string[];
  /** `deploy <src> --app web --key … --release-id <id> --json`, then `more` (the target, say). */
  deployArgs(src: string, releaseId: string, ...more: string[]): string[];
  /** The app's current generation, from the control socket. */
  generation(): Promise<{ number: number; releaseId: string }>;
  /** Writes the source tree of a release that behaves as `mode` says (by-release-mode fixture). */
  source(
    id: string,
    opts?: { mode?: string; files?: Record<string, string | Buffer>; hook?: string },
  ): Promise<string>;
  cleanup(): Promise<void>;
}

/**
 * An agent serving the `web` app from release r0, with a channel on a socket in its temp dir
 * and on a free loopback port, a fresh token (0600) and a signing key it trusts. `channel`
 * overrides channel settings (`port: undefined`: the socket only, as the default config).
 */
export async function startChannelAgent(
  channel: Record<string, unknown> = {},
  app: Record<string, unknown> = {},
  agentOpts: Parameters<typeof startAgent>[1] = {},
): Promise<ChannelAgent> {
  const tmp = await tempDir();
  const keys = path.join(tmp.dir, 'keys');
  const r = batonSync(['keygen', '--out', keys]);
  if (r.status !== 0) throw new Error(r.stderr);
  const publicKey = (await readFile(path.join(keys, 'baton.pub'), 'utf8')).trim();
  const tokenFile = path.join(tmp.dir, 'token');
  const t = batonSync(['agent', 'token', '--out', tokenFile]);
  if (t.status !== 0) throw new Error(t.stderr);
  const token = (await readFile(tokenFile, 'utf8')).trim();
  const channelSocket = path.join(tmp.dir, 'channel.sock');
  const [r0] = await releases(tmp.dir, 'r0');
  const agent = await startAgent(
    await writeConfig(tmp.dir, {
      stateDir: './state',
      trustedKeys: [publicKey],
      apps: [webApp({ release: r0, keepReleases: 5, ...app })],
      channel: { socket: channelSocket, port: 0, tokenFile, ...channel },
    }),
    agentOpts,
  );
  const listening = await agent.waitFor(
    (rec) => rec.type === 'channel' && typeof rec.socket === 'string',
    'channel listening',
  );
  const channelPort = (listening.port as number | undefined) ?? 0;
  const appPort = listenerPort((await control(agent.socket, { method: 'status' })).result);
  return {
    dir: tmp.dir,
    agent,
    channelPort,
    channelSocket,
    appPort,
    token,
    tokenFile,
    keyFile: path.join(keys, 'baton.key'),
    stateDir: path.join(tmp.dir, 'state'),
    direct: ['--agent', `ws://127.0.0.1:${channelPort}`, '--token-file', tokenFile],
    deployArgs: (src, releaseId, ...more) => [
      'deploy',
      src,
      '--app',
      'web',
      '--key',
      path.join(keys, 'baton.key'),
      '--release-id',
      releaseId,
      '--json',
      ...more,
    ],
    async generation() {
      const status = (await control(agent.socket, { method: 'status' })).result as AgentStatus;
      return status.apps[0]!.generation!;
    },
    async source(id, opts = {}) {
      const src = path.join(tmp.dir, 'src', id);
      await mkdir(src, { recursive: true });
      const hooks = opts.hook ? `hooks:\n  beforeRestart: ${JSON.stringify(opts.hook)}\n` : '';
      await writeFile(
        path.join(src, 'baton.yml'),
        `command: [node, ${JSON.stringify(path.join(FIXTURES, 'by-release-mode.mjs'))}]\n${hooks}`,
      );
      await writeFile(path.join(src, 'mode'), `${opts.mode ?? 'serve'}\n`);
      await writeFile(path.join(src, 'VERSION'), `${id}\n`);
      for (const [name, data] of Object.entries(opts.files ?? {}))
        await writeFile(path.join(src, name), data);
      return src;
    },
    async cleanup() {
      await agent.stop();
      await tmp.cleanup();
    },
  };
}

/** Parses the JSON lines of `baton deploy --json` output. */
export function jsonLines(stdout: string): { type: string; [k: string]: unknown }[] {
  return stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { type: string });
}

export interface Outcome {
  ok: boolean;
  kind: string;
  releaseId: string;
  uploadedBytes: number;
  phases: Record<string, number>;
  error?: { code: string; message: string };
}

/** The one `result` line of `baton deploy --json` output (asserts there is exactly one). */
export function outcomeOf(stdout: string): Outcome {
  const results = jsonLines(stdout).filter((l) => l.type === 'result');
  if (results.length !== 1)
    throw new Error(`expected one result, got ${results.length}:\n${stdout}`);
  return results[0]!.outcome as Outcome;
}

/** The phases of the events in `baton deploy --json` output, in order. */
export function phasesOf(stdout: string): string[] {
  return jsonLines(stdout)
    .filter((l) => l.type === 'event')
    .map((l) => (l.event as { phase?: string }).phase)
    .filter((p): p is string => p !== undefined);
}

/** The code in the `baton: CODE: message` line a failed command prints. */
export function errorCodeOf(stderr: string): string | undefined {
  return /baton: ([A-Z_]+):/.exec(stderr)?.[1];
}

/**
 * A beforeRestart hook that waits until `open()` creates its gate file: a deploy held at a
 * known step by the test itself (bounded by the hook's own timeout).
 */
export function gatedHook(dir: string, name: string): { hook: string; open: () => Promise<void> } {
  const file = path.join(dir, name);
  return {
    // Bounded: a test that never opens it fails by the hook's timeout, not by hanging here.
    hook: `i=0; while [ ! -e ${file} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done`,
    open: () => writeFile(file, 'go'),
  };
}

export interface AuditLine {
  event: string;
  peer?: string;
  deployId?: string;
  ok?: boolean;
  code?: string;
  uploadedBytes?: number;
}

/** The agent's audit log, parsed (empty before its first line). */
export async function readAudit(ch: ChannelAgent): Promise<AuditLine[]> {
  const text = await readFile(path.join(ch.stateDir, 'audit.log'), 'utf8').catch(() => '');
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as AuditLine);
}

/** Polls (bounded by the test deadline) until `pred` holds. */
export async function until(pred: () => boolean | Promise<boolean>, what: string): Promise<void> {
  await withDeadline(
    (async () => {
      while (!(await pred())) await new Promise((r) => setTimeout(r, 50));
    })(),
    what,
  );
}
