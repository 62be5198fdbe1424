// Shared by the tests, the benches and the demo (see README.md in this folder).
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { AgentStatus } from '../src/protocol/results.js';
import { releases, webApp, writeConfig } from './agent-config.js';
import { startAgent, type RunningAgent } from './agent-process.js';
import { batonSync } from './baton-cli.js';
import { control, listenerPort } from './control.js';
import { FIXTURES } from './paths.js';
import { tempDir } from './temp-dir.js';

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
 * `keys` is a `baton keygen` folder to trust instead of a fresh one, `tokenFile` a token to
 * take instead of a fresh one (a fleet shares both).
 */
export async function startChannelAgent(
  channel: Record<string, unknown> = {},
  app: Record<string, unknown> = {},
  agentOpts: Parameters<typeof startAgent>[1] = {},
  shared: { keys?: string; tokenFile?: string } = {},
): Promise<ChannelAgent> {
  const tmp = await tempDir();
  const keys = shared.keys ?? path.join(tmp.dir, 'keys');
  if (shared.keys === undefined) {
    const r = batonSync(['keygen', '--out', keys]);
    if (r.status !== 0) throw new Error(r.stderr);
  }
  const publicKey = (await readFile(path.join(keys, 'baton.pub'), 'utf8')).trim();
  const tokenFile = shared.tokenFile ?? path.join(tmp.dir, 'token');
  if (shared.tokenFile === undefined) {
    const t = batonSync(['agent', 'token', '--out', tokenFile]);
    if (t.status !== 0) throw new Error(t.stderr);
  }
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
    source: (id, opts = {}) => writeReleaseSource(path.join(tmp.dir, 'src'), id, opts),
    async cleanup() {
      await agent.stop();
      await tmp.cleanup();
    },
  };
}

/**
 * The source tree of a release, `<root>/<id>`, that behaves as `mode` says (the by-release-mode
 * fixture), with a beforeRestart `hook` and extra `files` when given.
 */
export async function writeReleaseSource(
  root: string,
  id: string,
  opts: { mode?: string; files?: Record<string, string | Buffer>; hook?: string } = {},
): Promise<string> {
  const src = path.join(root, id);
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
}
