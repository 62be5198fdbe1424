import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { webApp, writeConfig } from '../../support/agent-config.js';
import { startAgent, type RunningAgent } from '../../support/agent-process.js';
import { control, listenerPort } from '../../support/control.js';
import { FIXTURES } from '../../support/paths.js';
import { tempDir } from '../../support/temp-dir.js';

/** The fixture that behaves as its release directory's `mode` file says. */
export const BY_MODE = ['node', path.join(FIXTURES, 'by-release-mode.mjs')];

export type Mode =
  'serve' | 'exits-at-start' | 'never-ready' | 'ignores-sigterm' | 'stuck-starting';

/** Makes `<dir>/releases/<id>` with a `mode` file and any other files given. */
export async function modeRelease(
  dir: string,
  id: string,
  mode: Mode,
  files: Record<string, string> = {},
): Promise<string> {
  const release = path.join(dir, 'releases', id);
  await mkdir(release, { recursive: true });
  await writeFile(path.join(release, 'mode'), `${mode}\n`);
  for (const [name, text] of Object.entries(files)) await writeFile(path.join(release, name), text);
  return release;
}

export interface ModeAgent {
  tmp: Awaited<ReturnType<typeof tempDir>>;
  /** The release directory of v1 (mode `serve`), the one serving at start. */
  v1: string;
  agent: RunningAgent;
  /** The `web` app's listener port. */
  port: number;
}

/**
 * An agent serving the `web` app as the by-mode fixture from release v1 (`serve`), with `app`
 * overriding its config. The caller stops the agent and removes `tmp`.
 */
export async function startModeAgent(app: Record<string, unknown>): Promise<ModeAgent> {
  const tmp = await tempDir();
  try {
    const v1 = await modeRelease(tmp.dir, 'v1', 'serve');
    const config = await writeConfig(tmp.dir, {
      stateDir: './state',
      apps: [webApp({ command: BY_MODE, release: v1, ...app })],
    });
    const agent = await startAgent(config);
    const port = listenerPort((await control(agent.socket, { method: 'status' })).result);
    return { tmp, v1, agent, port };
  } catch (err) {
    await tmp.cleanup();
    throw err;
  }
}
