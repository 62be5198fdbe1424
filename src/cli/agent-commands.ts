import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BatonError } from '../errors.js';
import { formatEvent } from '../protocol/events.js';
import { z } from 'zod';
import {
  AgentStatusSchema,
  DeployResultSchema,
  ReleaseInfoSchema,
  StoreDeployResultSchema,
  UpgradeResultSchema,
  type AgentStatus,
  type DeployResult,
  type ReleaseInfo,
} from '../protocol/results.js';
import { agentPaths } from '../supervisor/agent-paths.js';
import { loadAgentConfig } from '../supervisor/config.js';
import { runningAgentPid } from '../supervisor/pid-file.js';
import { delay, isAlive } from '../supervisor/process-util.js';
import { runAgent } from '../agent/run-agent.js';
import { controlCall } from './control-client.js';

export interface Output {
  line(text: string): void;
  json(value: unknown): void;
}

/** node + the compiled CLI, however this process was started (agent/main.js or the bin). */
const CLI_MAIN = fileURLToPath(new URL('./main.js', import.meta.url));

function cliEntry(): string[] {
  return [process.execPath, CLI_MAIN];
}

export async function agentRun(configFile: string): Promise<void> {
  await runAgent(path.resolve(configFile), [
    ...cliEntry(),
    'agent',
    'run',
    '--config',
    path.resolve(configFile),
  ]);
}

/** Starts the agent in the background and returns once it is ready (or shows why it failed). */
export async function agentStart(configFile: string, out: Output): Promise<void> {
  const config = await loadAgentConfig(configFile);
  const paths = agentPaths(config.stateDir);
  const running = await runningAgentPid(paths.pidFile);
  if (running !== undefined)
    throw new BatonError('AGENT_RUNNING', `the agent is already running (pid ${running})`);
  await mkdir(config.stateDir, { recursive: true, mode: 0o700 });
  const log = openSync(paths.agentLog, 'a', 0o600);
  const child = spawn(
    process.execPath,
    [CLI_MAIN, 'agent', 'run', '--config', path.resolve(configFile)],
    {
      detached: true,
      stdio: ['ignore', log, log, 'pipe'],
      env: { ...process.env, BATON_NOTIFY_FD: '3' },
    },
  );
  closeSync(log);
  const outcome = await new Promise<string>((resolve) => {
    const pipe = child.stdio[3] as NodeJS.ReadableStream;
    pipe.setEncoding('utf8');
    pipe.on('data', (d: string) => d.includes('READY=1') && resolve('ready'));
    pipe.on('error', () => undefined);
    child.once('exit', (code, signal) => resolve(signal ?? `code ${code}`));
  });
  if (outcome !== 'ready') {
    const lines = (await readFile(paths.agentLog, 'utf8').catch(() => ''))
      .trimEnd()
      .split('\n')
      .slice(-5);
    throw new BatonError(
      'CONTROL_FAILED',
      `the agent exited while starting (${outcome}); see ${paths.agentLog}`,
      lines,
    );
  }
  child.unref();
  (child.stdio[3] as NodeJS.ReadableStream & { destroy(): void }).destroy();
  out.line(`agent started (pid ${child.pid}); log: ${paths.agentLog}`);
}

export async function agentStop(configFile: string, out: Output): Promise<void> {
  const config = await loadAgentConfig(configFile);
  const paths = agentPaths(config.stateDir);
  const pid = await runningAgentPid(paths.pidFile);
  if (pid === undefined)
    throw new BatonError('AGENT_NOT_RUNNING', `no agent is running for ${config.stateDir}`);
  process.kill(pid, 'SIGTERM');
  // The agent drains every app first; wait for as long as the slowest drain may take, and more.
  const limit = Date.now() + Math.max(...config.apps.map((a) => a.drain.timeoutMs)) + 30_000;
  while (isAlive(pid) && Date.now() < limit) await delay(100);
  if (isAlive(pid))
    throw new BatonError('CONTROL_FAILED', `agent pid ${pid} did not stop; see ${paths.agentLog}`);
  out.line(`agent stopped (pid ${pid})`);
}

async function socketOf(configFile: string): Promise<string> {
  return agentPaths((await loadAgentConfig(configFile)).stateDir).socket;
}

export async function agentStatus(configFile: string, json: boolean, out: Output): Promise<void> {
  const status = await controlCall(
    await socketOf(configFile),
    { method: 'status' },
    AgentStatusSchema,
  );
  printStatus(status, json, out);
}

/** An agent's status as lines (or JSON), the same for this host's agent and a remote one. */
export function printStatus(status: AgentStatus, json: boolean, out: Output): void {
  if (json) return out.json(status);
  out.line(
    `agent pid ${status.pid}, up since ${status.startedAt}` +
      (status.channelSocket !== undefined ? `, channel on ${status.channelSocket}` : '') +
      (status.channelPort !== undefined
        ? `${status.channelSocket !== undefined ? ' and' : ', channel on'} port ${status.channelPort}`
        : ''),
  );
  for (const app of status.apps) {
    const gen = app.generation
      ? `gen ${app.generation.number} pid ${app.generation.pid}`
      : 'no generation';
    out.line(
      `${app.name}: ${app.state}, release ${app.release?.id ?? '-'} (${gen}), previous ${app.previous?.id ?? '-'}, restarts ${app.restarts}`,
    );
    // Newer agents add these; an older agent (or a remote one) may not send them.
    const extra = app as { user?: unknown; notifyStatus?: unknown };
    if (typeof extra.user === 'string' && extra.user) out.line(`  runs as ${extra.user}`);
    if (typeof extra.notifyStatus === 'string' && extra.notifyStatus)
      // The app wrote it: no control characters reach the terminal.
      // eslint-disable-next-line no-control-regex
      out.line(`  app status: ${extra.notifyStatus.replace(/[\x00-\x1f\x7f]/g, ' ')}`);
    for (const l of app.listeners)
      out.line(`  listener ${l.name} ${l.address}${l.origin ? ` (${l.origin})` : ' (NOT HELD)'}`);
    if (app.warning) out.line(`  warning: ${app.warning}`);
    if (app.lastError) out.line(`  last error: ${app.lastError}`);
  }
}

function printResults(results: DeployResult[], json: boolean, out: Output): void {
  if (json) return out.json(results);
  for (const r of results)
    out.line(
      `${r.app}: release ${r.releaseId} serving as gen ${r.generation} in ${r.durationMs} ms` +
        (r.cold ? ' (COLD switch: listeners were re-bound)' : '') +
        (r.drained === 'killed' ? '; old generation killed at the drain deadline' : ''),
    );
}

export async function agentDeploy(
  configFile: string,
  opts: { app: string; release: string; id: string | undefined; json: boolean; quiet: boolean },
  out: Output,
): Promise<void> {
  const result = await controlCall(
    await socketOf(configFile),
    { method: 'deploy', app: opts.app, releaseDir: path.resolve(opts.release), releaseId: opts.id },
    DeployResultSchema,
    (e) => !opts.json && !opts.quiet && out.line(formatEvent(e)),
  );
  printResults([result], opts.json, out);
}

export async function agentReload(
  configFile: string,
  app: string | undefined,
  json: boolean,
  quiet: boolean,
  out: Output,
): Promise<void> {
  const results = await controlCall(
    await socketOf(configFile),
    { method: 'reload', app },
    z.array(DeployResultSchema),
    (e) => (!json && !quiet ? out.line(formatEvent(e)) : undefined),
  );
  printResults(results, json, out);
}

export async function agentUpgrade(configFile: string, out: Output): Promise<void> {
  const result = await controlCall(
    await socketOf(configFile),
    { method: 'upgrade' },
    UpgradeResultSchema,
  );
  out.line(`agent upgraded: new agent pid ${result.pid}; apps kept serving`);
}

export async function agentDeployArtifact(
  configFile: string,
  opts: { app: string; archive: string; manifest: string; json: boolean; quiet: boolean },
  out: Output,
): Promise<void> {
  const result = await controlCall(
    await socketOf(configFile),
    {
      method: 'deploy-artifact',
      app: opts.app,
      archive: path.resolve(opts.archive),
      manifest: path.resolve(opts.manifest),
    },
    StoreDeployResultSchema,
    (e) => !opts.json && !opts.quiet && out.line(formatEvent(e)),
  );
  printResults([result], opts.json, out);
  if (!opts.json && result.pruned.removed.length)
    out.line(
      `pruned ${result.pruned.removed.join(', ')} (${result.pruned.bytesFreed} bytes freed)`,
    );
}

export async function agentRollback(
  configFile: string,
  opts: { app: string; to: string | undefined; force: boolean; json: boolean; quiet: boolean },
  out: Output,
): Promise<void> {
  const result = await controlCall(
    await socketOf(configFile),
    { method: 'rollback', app: opts.app, to: opts.to, ...(opts.force && { force: true }) },
    StoreDeployResultSchema,
    (e) => !opts.json && !opts.quiet && out.line(formatEvent(e)),
  );
  printResults([result], opts.json, out);
}

export async function agentReleases(
  configFile: string,
  app: string,
  json: boolean,
  out: Output,
): Promise<void> {
  const releases = await controlCall(
    await socketOf(configFile),
    { method: 'releases', app },
    z.array(ReleaseInfoSchema),
  );
  printReleases(app, releases, json, out);
}

/** The releases a host keeps, one line each (or JSON). */
export function printReleases(
  app: string,
  releases: ReleaseInfo[],
  json: boolean,
  out: Output,
): void {
  if (json) return out.json(releases);
  if (releases.length === 0) return out.line(`${app}: no releases in the store`);
  for (const r of releases)
    out.line(
      `${r.id.padEnd(28)} ${r.status.padEnd(9)} ${r.digest.slice(0, 12)}  ${r.createdAt}  ${r.gitSha ?? ''}${r.untrustedReason ? `  (${r.untrustedReason})` : r.failedReason ? `  (${r.failedReason})` : ''}`,
    );
}
