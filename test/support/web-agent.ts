import { releases, webApp, writeConfig } from '../../support/agent-config.js';
import { startAgent, type RunningAgent } from '../../support/agent-process.js';
import { control, listenerPort } from '../../support/control.js';
import { tempDir } from '../../support/temp-dir.js';

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
