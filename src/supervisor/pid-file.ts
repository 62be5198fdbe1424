import { readFile, rm, writeFile } from 'node:fs/promises';
import { BatonError } from '../errors.js';
import { isAlive } from './process-util.js';

/** The pid in a PID file if that process is alive and is a baton agent; a stale file gives undefined. */
export async function runningAgentPid(file: string): Promise<number | undefined> {
  const text = await readFile(file, 'utf8').catch(() => '');
  const pid = Number(text.trim());
  if (!Number.isInteger(pid) || pid <= 0 || !isAlive(pid)) return undefined;
  // A pid reused by an unrelated process after a crash is not our agent.
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => undefined);
  if (cmdline !== undefined && !cmdline.includes('agent')) return undefined;
  return pid;
}

/**
 * Claims the PID file. `successorOf` is the agent being upgraded: its live pid in the file is
 * expected, not a conflict.
 */
export async function claimPidFile(file: string, successorOf?: number): Promise<void> {
  const running = await runningAgentPid(file);
  if (running !== undefined && running !== process.pid && running !== successorOf)
    throw new BatonError(
      'AGENT_RUNNING',
      `an agent is already running with this state directory (pid ${running}); stop it with "baton agent stop" or use another stateDir`,
    );
  await writeFile(file, `${process.pid}\n`, { mode: 0o644 });
}

export async function releasePidFile(file: string): Promise<void> {
  const text = await readFile(file, 'utf8').catch(() => '');
  if (Number(text.trim()) === process.pid) await rm(file, { force: true });
}
