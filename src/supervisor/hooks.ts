import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { BatonError } from '../errors.js';
import { report, type Reporter } from '../protocol/events.js';
import type { AppConfig, HookConfig } from '../protocol/app-schema.js';
import type { Launch } from './generation-launch.js';
import { launchEnvironment } from './privilege.js';
import { childBaseEnv, signalGroup } from './process-util.js';

/** How long a hook's output may still flow after the hook exited. */
const HOOK_OUTPUT_GRACE_MS = 1000;

export type HookName = 'start' | 'stop' | 'beforeRestart' | 'afterRestart';

export interface HookContext {
  app: AppConfig;
  /** The app's user, umask, limits and env file: hooks run as the app does. */
  launch?: Pick<Launch, 'setup' | 'exec' | 'switchesUser' | 'env'>;
  cwd: string;
  releaseId: string | undefined;
  previousReleaseId: string | undefined;
  reporter: Reporter;
}

/**
 * Runs one lifecycle hook with /bin/sh (a shell on purpose: hooks are shell commands the user
 * wrote), in its own process group so a timeout kills what it started too. Throws HOOK_FAILED or
 * HOOK_TIMEOUT with the hook's last lines.
 */
export async function runHook(
  name: HookName,
  hook: HookConfig | undefined,
  ctx: HookContext,
): Promise<void> {
  if (!hook) return;
  const { app, reporter } = ctx;
  const started = Date.now();
  report(reporter, {
    type: 'phase',
    app: app.name,
    phase: 'hook-started',
    hook: name,
    releaseId: ctx.releaseId,
  });
  const agentSet: Record<string, string> = { BATON_APP: app.name, BATON_HOOK: name };
  if (ctx.releaseId) agentSet.BATON_RELEASE_ID = ctx.releaseId;
  if (ctx.previousReleaseId) agentSet.BATON_PREVIOUS_RELEASE_ID = ctx.previousReleaseId;
  const launch = ctx.launch ?? { setup: '', exec: 'exec', switchesUser: false };
  const env = launchEnvironment(
    launch,
    childBaseEnv(app.passEnv, launch),
    { ...app.env, ...ctx.launch?.env },
    agentSet,
  );
  const script = `${launch.setup ? `${launch.setup}; ` : ''}${launch.exec} /bin/sh -c "$1"`;
  const child = spawn('/bin/sh', ['-c', script, `baton-hook-${name}`, hook.run], {
    cwd: ctx.cwd,
    env,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  const source = `hook:${name}`;
  for (const stream of [child.stdout, child.stderr]) {
    createInterface({ input: stream, crlfDelay: Infinity }).on('line', (line) => {
      lines.push(line);
      if (lines.length > app.logLines) lines.shift();
      report(reporter, { type: 'log', app: app.name, source, line });
    });
  }
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    if (child.pid) signalGroup(child.pid, 'SIGKILL');
  }, hook.timeoutMs);
  const result = await new Promise<{
    code: number | null;
    signal: NodeJS.Signals | null;
    error?: Error;
  }>((resolve) => {
    child.once('error', (error) => resolve({ code: null, signal: null, error }));
    child.once('close', (code, signal) => resolve({ code, signal }));
    // 'close' waits for the output pipes, which a daemon the hook started (setsid, out of the
    // process group a timeout kills) may hold open for ever: once the hook itself has exited,
    // give its output a moment, then stop reading.
    child.once('exit', () => {
      setTimeout(() => {
        child.stdout?.destroy();
        child.stderr?.destroy();
      }, HOOK_OUTPUT_GRACE_MS).unref();
    });
  });
  clearTimeout(timer);
  const durationMs = Date.now() - started;
  if (timedOut || result.error || result.code !== 0) {
    const why = timedOut
      ? `timed out after ${hook.timeoutMs} ms`
      : result.error
        ? result.error.message
        : result.signal
          ? `was killed by ${result.signal}`
          : `exited with code ${result.code}`;
    const code = timedOut ? 'HOOK_TIMEOUT' : 'HOOK_FAILED';
    report(reporter, {
      type: 'phase',
      app: app.name,
      phase: 'failed',
      hook: name,
      durationMs,
      code,
      detail: why,
    });
    throw new BatonError(code, `${name} hook of ${app.name} ${why}`, lines.slice(-20));
  }
  report(reporter, {
    type: 'phase',
    app: app.name,
    phase: 'hook-finished',
    hook: name,
    durationMs,
  });
}
