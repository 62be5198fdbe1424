import path from 'node:path';
import { BatonError, errorMessage } from '../errors.js';
import type { AppRuntime } from './app-launcher.js';
import type { AgentConfig } from '../protocol/agent-config.js';
import { readEnvFile } from './env-file.js';
import { notifyUnavailable } from './notify-socket.js';
import { resolveRunAs } from './privilege.js';
import { sharedRoot } from './shared-paths.js';

/**
 * What the config asks of this host, checked before anything is started or adopted: each app's
 * user and groups exist (and it is not root unless `allowRoot`), its env file reads and parses,
 * and the systemd notify protocol can be served where asked for. Every problem found is reported
 * at once, each with its fix. (Shared paths that lead out of the area are refused by the config
 * schema; what an app put in its own shared area is the app's problem, found when it starts.)
 */
export async function preflight(config: AgentConfig): Promise<Map<string, AppRuntime>> {
  const runtimes = new Map<string, AppRuntime>();
  const problems: BatonError[] = [];
  const runDir = path.join(config.stateDir, 'run');
  for (const app of config.apps) {
    const check = async <T>(fn: () => Promise<T>): Promise<T | undefined> => {
      try {
        return await fn();
      } catch (err) {
        problems.push(
          err instanceof BatonError
            ? err
            : new BatonError('CONFIG_INVALID', `app ${app.name}: ${errorMessage(err)}`),
        );
        return undefined;
      }
    };
    if (app.readiness.type === 'systemd') {
      const why = notifyUnavailable();
      if (why) problems.push(new BatonError('NOTIFY_UNAVAILABLE', `app ${app.name}: ${why}`));
    }
    const runAs = await check(() => resolveRunAs(app));
    if (app.envFile !== undefined) await check(() => readEnvFile(app.envFile!));
    runtimes.set(app.name, { runAs, runDir, sharedRoot: sharedRoot(config.stateDir, app.name) });
  }
  if (problems.length === 1) throw problems[0]!;
  if (problems.length > 1)
    throw new BatonError(
      problems[0]!.code,
      `${problems.length} problems in the config: ${problems.map((p) => p.message).join('; ')}`,
    );
  return runtimes;
}
