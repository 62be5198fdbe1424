import { spawn } from 'node:child_process';
import { closeSync, fstatSync, openSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { BatonError } from '../errors.js';
import { activationEnv, fdName, onReadyLine, ownPidScript } from './activation.js';
import type { AppSupervisor } from './app-supervisor.js';
import { signalGroup } from './process-util.js';

/** How long an upgrade waits for the new agent to adopt everything and say READY. */
const UPGRADE_TIMEOUT_MS = 120_000;

/** A new agent process that has taken over: `done` lets this one's apps go to it. */
export interface Successor {
  pid: number;
  done: () => Promise<void>;
}

/** The last lines written to `file` after offset `from` (read from at most its last 16 KiB). */
async function lastLinesSince(file: string, from: number, count = 5): Promise<string[]> {
  const handle = await open(file, 'r').catch(() => undefined);
  if (!handle) return [];
  try {
    const size = (await handle.stat()).size;
    const start = Math.max(from, size - 16 * 1024);
    const buf = Buffer.alloc(Math.max(0, size - start));
    await handle.read(buf, 0, buf.length, start);
    return buf.toString('utf8').trimEnd().split('\n').filter(Boolean).slice(-count);
  } catch {
    return [];
  } finally {
    await handle.close();
  }
}

/**
 * Replaces this agent by a new agent process (e.g. a newer baton) while the apps keep serving:
 * the successor inherits every listener the systemd way, adopts the generations from the state
 * file and says READY on a pipe. Resolves with its pid once it has; then this agent lets go.
 * If the successor fails, this agent carries on as before.
 */
export async function spawnSuccessor(
  sups: readonly AppSupervisor[],
  agentLog: string,
  argv: string[],
): Promise<Successor> {
  const busy = sups.find((sup) => sup.status().deploy !== undefined);
  if (busy)
    throw new BatonError(
      'DEPLOY_BUSY',
      `busy: ${busy.status().deploy} of ${busy.app.name} in progress; upgrade the agent when it ends`,
    );
  const names: string[] = [];
  const fds: number[] = [];
  for (const sup of sups) {
    for (const l of sup.listenerFds) {
      names.push(fdName(sup.app, l.name));
      fds.push(l.fd);
    }
  }
  for (const sup of sups) sup.detach();
  const notifyFd = 3 + fds.length;
  const out = openSync(agentLog, 'a', 0o600);
  // Where the successor's own lines start, to quote them if it fails.
  const logFrom = fstatSync(out).size;
  const env: NodeJS.ProcessEnv = { ...process.env };
  // This agent's own activation, if any, is not the successor's: it gets every listener.
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  Object.assign(env, activationEnv(names), {
    BATON_NOTIFY_FD: String(notifyFd),
    BATON_PREDECESSOR_PID: String(process.pid),
  });
  const child = spawn('/bin/sh', ['-c', ownPidScript(['LISTEN_PID']), 'baton-agent', ...argv], {
    env,
    detached: true,
    stdio: ['ignore', out, out, ...fds, 'pipe'],
  });
  closeSync(out);
  let timer: NodeJS.Timeout | undefined;
  try {
    await new Promise<void>((resolve, reject) => {
      onReadyLine(child.stdio[notifyFd] as NodeJS.ReadableStream, resolve);
      child.once('error', reject);
      child.once('exit', (code, signal) =>
        reject(
          new BatonError(
            'CONTROL_FAILED',
            `the new agent exited before it was ready (${signal ?? `code ${code}`}); see ${agentLog}. This agent carries on.`,
          ),
        ),
      );
      // Never wait forever: a successor that hangs is killed and this agent carries on.
      timer = setTimeout(() => {
        if (child.pid) signalGroup(child.pid, 'SIGKILL');
        reject(
          new BatonError(
            'CONTROL_FAILED',
            `the new agent was not ready within ${UPGRADE_TIMEOUT_MS / 1000} s and was killed; see ${agentLog}. This agent carries on.`,
          ),
        );
      }, UPGRADE_TIMEOUT_MS);
    });
  } catch (err) {
    for (const sup of sups) sup.resume();
    if (!(err instanceof BatonError)) throw err;
    // Why it failed (a bad token file, a port taken) is in its last lines: show them here.
    throw new BatonError(err.code, err.message, await lastLinesSince(agentLog, logFrom));
  } finally {
    clearTimeout(timer);
  }
  child.unref();
  (child.stdio[notifyFd] as NodeJS.ReadableStream & { destroy(): void }).destroy();
  return {
    pid: child.pid!,
    done: async () => {
      for (const sup of sups) await sup.handOff();
    },
  };
}
