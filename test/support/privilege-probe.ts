// The privileged-probe fixture and what the least-privilege tests share: an app run as
// `nobody` that reports who it runs as, and the file searches a secret must not show up in.
import assert from 'node:assert/strict';
import { chmod, lstat, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { gunzipSync } from 'node:zlib';
import type { StoreDeployResult, AppStatus } from '../../src/protocol/results.js';
import { releases, webApp, writeConfig } from '../../support/agent-config.js';
import { type RunningAgent, startAgent } from '../../support/agent-process.js';
import { batonAsync, batonSync } from '../../support/baton-cli.js';
import { control, listenerPort } from '../../support/control.js';
import { get } from '../../support/http-get.js';
import { FIXTURES } from '../../support/paths.js';
import { tempDir } from '../../support/temp-dir.js';

export const run = promisify(execFile);
export const PROBE = path.join(FIXTURES, 'privileged-probe.mjs');
/** nobody / nogroup and users on Debian. */
export const NOBODY = 65534;
export const USERS_GID = 100;

export interface Whoami {
  uid: number;
  gid: number;
  euid: number;
  groups: number[];
  umask: string;
  openFiles: { soft: number; hard: number };
  user: string;
  home: string;
  releaseDir: string;
  writeRelease: string;
}

/**
 * A temp dir the app's user can pass through: mkdtemp makes it 0700, and the releases, fixture
 * files and env files the tests write under it must be reachable by `nobody`.
 */
export async function passableTempDir(): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const tmp = await tempDir('baton-least-privilege-');
  await chmod(tmp.dir, 0o755);
  return tmp;
}

/** The `web` app as the probe fixture, run as `nobody` (webApp's allowRoot switched off). */
export function probeApp(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return webApp({
    command: ['node', PROBE],
    allowRoot: false,
    user: 'nobody',
    drain: { timeoutMs: 10_000 },
    ...overrides,
  });
}

/** Writes a file only its owner (root, the agent) can read or write, as an env file should be. */
export async function writePrivate(file: string, text: string): Promise<void> {
  await writeFile(file, text, { mode: 0o600 });
  await chmod(file, 0o600);
}

export interface Probe {
  dir: string;
  stateDir: string;
  configFile: string;
  agent: RunningAgent;
  port: number;
  /** The release the agent starts from: a plain directory, not in the store. */
  r0: string;
  keyFile: string;
  /** `--agent ws://… --token-file …` when started with a channel. */
  direct: string[];
  /** Writes the source tree of release `id` (probe command, a VERSION, `files`) and returns it. */
  source(id: string, files?: Record<string, string>): Promise<string>;
  /** Packs and signs `source(id, files)`: the archive and manifest a store deploy takes. */
  pack(id: string, files?: Record<string, string>): Promise<{ archive: string; manifest: string }>;
  /** Packs release `id` and deploys it into the store through the control socket. */
  deployArtifact(id: string, files?: Record<string, string>): Promise<StoreDeployResult>;
  status(): Promise<AppStatus>;
  whoami(): Promise<Whoami>;
  cleanup(): Promise<void>;
}

/**
 * An agent serving the probe as `web` from a plain release r0, trusting a fresh signing key, with
 * a channel when asked. `prepare` writes what the config refers to (an env file) first; relative
 * paths in `app` are relative to the temp dir, where the config is.
 */
export async function startProbe(
  app: Record<string, unknown>,
  opts: { channel?: boolean; prepare?: (dir: string) => Promise<void> } = {},
): Promise<Probe> {
  const tmp = await passableTempDir();
  try {
    const keys = path.join(tmp.dir, 'keys');
    const k = batonSync(['keygen', '--out', keys]);
    assert.equal(k.status, 0, k.stderr);
    const publicKey = (await readFile(path.join(keys, 'baton.pub'), 'utf8')).trim();
    const keyFile = path.join(keys, 'baton.key');
    const tokenFile = path.join(tmp.dir, 'token');
    if (opts.channel) {
      const t = batonSync(['agent', 'token', '--out', tokenFile]);
      assert.equal(t.status, 0, t.stderr);
    }
    const [r0] = await releases(tmp.dir, 'r0');
    await opts.prepare?.(tmp.dir);
    const configFile = await writeConfig(tmp.dir, {
      stateDir: './state',
      trustedKeys: [publicKey],
      apps: [probeApp({ release: r0, ...app })],
      ...(opts.channel && {
        channel: { socket: path.join(tmp.dir, 'channel.sock'), port: 0, tokenFile },
      }),
    });
    const agent = await startAgent(configFile);
    let channelPort = 0;
    if (opts.channel)
      channelPort = (
        await agent.waitFor(
          (r) => r.type === 'channel' && typeof r.port === 'number',
          'channel listening',
        )
      ).port as number;
    const port = listenerPort((await control(agent.socket, { method: 'status' })).result);
    const out = path.join(tmp.dir, 'out');
    const probe: Probe = {
      dir: tmp.dir,
      stateDir: path.join(tmp.dir, 'state'),
      configFile,
      agent,
      port,
      r0: r0!,
      keyFile,
      direct: ['--agent', `ws://127.0.0.1:${channelPort}`, '--token-file', tokenFile],
      async source(id, files = {}) {
        const src = path.join(tmp.dir, 'src', id);
        await mkdir(src, { recursive: true });
        await writeFile(path.join(src, 'baton.yml'), `command: [node, ${JSON.stringify(PROBE)}]\n`);
        // Content of its own: packing is reproducible, so equal trees would be one artifact.
        await writeFile(path.join(src, 'VERSION'), `${id}\n`);
        for (const [name, data] of Object.entries(files)) {
          await mkdir(path.dirname(path.join(src, name)), { recursive: true });
          await writeFile(path.join(src, name), data);
        }
        return src;
      },
      async pack(id, files) {
        const src = await probe.source(id, files);
        const p = batonSync([
          'pack',
          src,
          '--app',
          'web',
          '--out',
          out,
          '--release-id',
          id,
          '--key',
          keyFile,
        ]);
        assert.equal(p.status, 0, p.stderr);
        return {
          archive: path.join(out, `${id}.tar.gz`),
          manifest: path.join(out, `${id}.manifest.json`),
        };
      },
      async deployArtifact(id, files) {
        const a = await probe.pack(id, files);
        const { result } = await control(agent.socket, {
          method: 'deploy-artifact',
          app: 'web',
          archive: a.archive,
          manifest: a.manifest,
        });
        return result as StoreDeployResult;
      },
      async status() {
        const { result } = await control(agent.socket, { method: 'status' });
        return (result as { apps: AppStatus[] }).apps.find((a) => a.name === 'web')!;
      },
      async whoami() {
        const res = await get(port, '/whoami');
        assert.equal(res.status, 200, res.body);
        return JSON.parse(res.body) as Whoami;
      },
      async cleanup() {
        await agent.stop();
        await tmp.cleanup();
      },
    };
    return probe;
  } catch (err) {
    await tmp.cleanup();
    throw err;
  }
}

/** Every regular file under `dir`, links not followed. */
export async function filesUnder(dir: string): Promise<string[]> {
  const found: string[] = [];
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  for (const e of entries) {
    const full = path.join(dir, e.name);
    if (e.isDirectory()) found.push(...(await filesUnder(full)));
    else if (e.isFile()) found.push(full);
  }
  return found;
}

/** The files under `dir` whose bytes (gunzipped, for archives) contain `needle`. */
export async function filesContaining(
  dir: string,
  needle: string,
  skip: RegExp,
): Promise<string[]> {
  const hits: string[] = [];
  for (const file of await filesUnder(dir)) {
    if (skip.test(file)) continue;
    let bytes = await readFile(file);
    if (file.endsWith('.gz')) bytes = gunzipSync(bytes);
    if (bytes.includes(needle)) hits.push(file);
  }
  return hits;
}

/** `baton agent run` on a config it must refuse: its exit code and the error it printed. */
export async function refusedRun(
  configFile: string,
): Promise<{ code: number | null; stderr: string }> {
  const run = batonAsync(['agent', 'run', '--config', configFile]);
  const { code, stderr } = await run.done;
  return { code, stderr };
}

/** A command that leaves `marker` behind if the app is ever started, then runs the probe. */
export function markingCommand(marker: string): string[] {
  return ['/bin/sh', '-c', 'touch "$0"; exec node "$1"', marker, PROBE];
}

export async function exists(file: string): Promise<boolean> {
  return (await lstat(file).catch(() => undefined)) !== undefined;
}
