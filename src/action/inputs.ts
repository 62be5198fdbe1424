import { existsSync, statSync } from 'node:fs';
import { BatonError, errorMessage } from '../errors.js';
import { ReleaseIdSchema } from '../protocol/manifest.js';
import { checkToken } from '../transport/auth.js';
import { normalizeFingerprint } from '../transport/known-hosts.js';
import type { ParsedKey } from 'ssh2';
import { readPrivateKey } from '../transport/ssh.js';
import { parseSshTarget } from '../transport/ssh-target.js';
import { parseBatchSize, type BatchSize } from '../deploy/batches.js';
import type { OnFailure } from '../deploy/fleet-types.js';
import { parseHosts, type HostSpec } from './hosts-input.js';

/**
 * Where the action's inputs come from: @actions/core on a runner (`coreInputs` in
 * action-io.ts), a plain map in a test that records which names are read.
 */
export interface InputSource {
  /** The input's value, trimmed; '' when not set. */
  get(name: string): string;
  /** A boolean input (`true`/`false` in any of YAML's spellings); throws on anything else. */
  bool(name: string): boolean;
  /** Hides a value from every log line from now on. */
  secret(value: string): void;
}

/** What the step deploys: an artifact, a release the hosts hold, or a rollback. */
export type ActionTask =
  | { kind: 'deploy'; artifact: string; releaseId?: string }
  | { kind: 'redeploy'; release: string }
  | { kind: 'rollback'; release?: string };

/** Every input of action.yml, read, checked and typed. */
export interface ActionInputs {
  hosts: HostSpec[];
  ssh: {
    /**
     * The private key, decrypted here once: with a passphrase that costs about 0.3 s (bcrypt),
     * which each host's connection would otherwise pay again.
     */
    key: ParsedKey;
    knownHosts?: string;
    /** For every host without its own fingerprint= word. */
    fingerprint?: string;
    jump: string[];
    connectTimeoutMs: number;
  };
  /** The channel on every host without its own agent-port= / agent-socket= word. */
  agent: { port: number } | { socket: string };
  agentToken: string;
  app: string;
  task: ActionTask;
  signingKey?: string;
  strategy: 'parallel' | 'rolling';
  batchSize: BatchSize;
  maxParallel: number;
  onFailure: OnFailure;
  busyTimeoutMs: number;
  timeoutMs: number;
  dryRun: boolean;
  github: {
    token?: string;
    environment?: string;
    environmentUrl?: string;
    /** Record a GitHub Deployment. */
    deployment: boolean;
  };
}

/** An input that is wrong: one line naming it, what was wrong and what to do. */
function bad(name: string, what: string): BatonError {
  return new BatonError('USAGE', `input ${name}: ${what}`);
}

/** Seconds as milliseconds, from `min` up to `max` (timers hold at most about 24 days). */
function seconds(src: InputSource, name: string, min: number, max: number): number {
  const text = src.get(name);
  const n = Number(text);
  if (text === '' || !Number.isFinite(n) || n < min || n > max)
    throw bad(name, `"${text}" is not a number of seconds from ${min} to ${max}`);
  return Math.round(n * 1000);
}

function oneOf<T extends string>(src: InputSource, name: string, allowed: readonly T[]): T {
  const text = src.get(name);
  if (!(allowed as readonly string[]).includes(text))
    throw bad(name, `"${text}" is not one of ${allowed.join(', ')}`);
  return text as T;
}

function optional(src: InputSource, name: string): string | undefined {
  const text = src.get(name);
  return text === '' ? undefined : text;
}

function boolOf(src: InputSource, name: string): boolean {
  try {
    return src.bool(name);
  } catch {
    throw bad(name, `"${src.get(name)}" is not true or false`);
  }
}

/** Masks a secret, and each of its lines: a key's lines may reach a log one at a time. */
function secret(src: InputSource, name: string): string | undefined {
  const value = optional(src, name);
  if (value === undefined) return undefined;
  src.secret(value);
  for (const line of value.split(/\r?\n/)) if (line.trim().length >= 8) src.secret(line.trim());
  return value;
}

/**
 * Reads every input. Secrets are masked before anything else is read, so no message below can
 * show one. A bad or contradictory input throws one line naming it, before any host is
 * contacted.
 */
export function readInputs(src: InputSource): ActionInputs {
  const privateKey = secret(src, 'ssh-key');
  const passphrase = secret(src, 'ssh-key-passphrase');
  const token = secret(src, 'agent-token');
  const signingKey = secret(src, 'signing-key');
  const githubToken = secret(src, 'github-token');

  const hostsText = optional(src, 'hosts');
  if (hostsText === undefined) throw bad('hosts', 'required: the hosts to deploy to, one per line');
  const hosts = parseHosts(hostsText, optional(src, 'username'));
  if (privateKey === undefined)
    throw bad('ssh-key', 'required: the private SSH key that logs in to the hosts (a secret)');
  let key: ParsedKey;
  try {
    key = readPrivateKey(privateKey, passphrase);
  } catch (err) {
    throw bad(passphrase === undefined ? 'ssh-key' : 'ssh-key-passphrase', errorMessage(err));
  }
  if (token === undefined)
    throw bad(
      'agent-token',
      "required: the agents' channel token (their channel.tokenFile; a secret)",
    );
  let agentToken: string;
  try {
    agentToken = checkToken(token, 'input agent-token');
  } catch (err) {
    throw new BatonError('USAGE', errorMessage(err));
  }

  const knownHosts = optional(src, 'known-hosts');
  let fingerprint = optional(src, 'fingerprint');
  if (fingerprint !== undefined) {
    try {
      fingerprint = normalizeFingerprint(fingerprint);
    } catch (err) {
      throw bad('fingerprint', errorMessage(err));
    }
  }
  if (knownHosts === undefined && fingerprint === undefined) {
    const unpinned = hosts.filter((h) => h.fingerprint === undefined).map((h) => h.label);
    if (unpinned.length > 0)
      throw bad(
        'known-hosts',
        `nothing vouches for the host key of ${unpinned.join(', ')}: give known-hosts (the output of ssh-keyscan HOST, checked) or fingerprint (SHA256:…); an unknown host key is refused`,
      );
  }
  const jump = (optional(src, 'jump') ?? '')
    .split(/[\n,]/)
    .map((s) => s.trim())
    .filter(Boolean);
  for (const hop of jump) {
    try {
      parseSshTarget(hop);
    } catch (err) {
      throw bad('jump', errorMessage(err));
    }
    if (knownHosts === undefined)
      throw bad(
        'known-hosts',
        `the jump host ${hop} is checked against known-hosts: give its key there`,
      );
  }

  const port = optional(src, 'agent-port');
  const socket = optional(src, 'agent-socket') ?? '/run/baton/channel.sock';
  let agent: ActionInputs['agent'];
  if (port !== undefined) {
    if (!/^\d{1,5}$/.test(port) || Number(port) < 1 || Number(port) > 65535)
      throw bad('agent-port', `"${port}" is not a port from 1 to 65535`);
    agent = { port: Number(port) };
  } else {
    if (!socket.startsWith('/'))
      throw bad('agent-socket', `"${socket}" must be an absolute path on the hosts`);
    agent = { socket };
  }

  const app = optional(src, 'app');
  if (app === undefined) throw bad('app', "required: the app's name in the agents' config");
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(app))
    throw bad('app', `"${app}" is not an app name (letters, digits, _ . -, at most 64)`);

  const task = readTask(src);
  const strategy = oneOf(src, 'strategy', ['parallel', 'rolling'] as const);
  const batchSize = parseBatchSize(src.get('batch-size'), 'input batch-size');
  const maxParallel = Number(src.get('max-parallel'));
  if (!Number.isInteger(maxParallel) || maxParallel < 1 || maxParallel > 256)
    throw bad('max-parallel', `"${src.get('max-parallel')}" is not a whole number from 1 to 256`);

  const environment = optional(src, 'environment');
  const environmentUrl = optional(src, 'environment-url');
  if (environmentUrl !== undefined && !/^https?:\/\/\S+$/.test(environmentUrl))
    throw bad('environment-url', `"${environmentUrl}" is not an http(s) URL`);
  const deployment =
    optional(src, 'deployment') === undefined
      ? environment !== undefined
      : boolOf(src, 'deployment');
  if (deployment && environment === undefined)
    throw bad('deployment', 'a GitHub Deployment needs the environment input (e.g. production)');

  return {
    hosts,
    ssh: {
      key,
      ...(knownHosts !== undefined && { knownHosts }),
      ...(fingerprint !== undefined && { fingerprint }),
      jump,
      connectTimeoutMs: seconds(src, 'connect-timeout', 1, 3600),
    },
    agent,
    agentToken,
    app,
    task,
    ...(signingKey !== undefined && { signingKey }),
    strategy,
    batchSize,
    maxParallel,
    onFailure: oneOf(src, 'on-failure', ['rollback', 'stop', 'continue'] as const),
    busyTimeoutMs: seconds(src, 'busy-timeout', 0, 2_000_000),
    timeoutMs: seconds(src, 'timeout', 1, 2_000_000),
    dryRun: boolOf(src, 'dry-run'),
    github: {
      ...(githubToken !== undefined && { token: githubToken }),
      ...(environment !== undefined && { environment }),
      ...(environmentUrl !== undefined && { environmentUrl }),
      deployment,
    },
  };
}

/** artifact, release, release-id and rollback: which task, refusing what contradicts. */
function readTask(src: InputSource): ActionTask {
  const artifact = optional(src, 'artifact');
  const release = optional(src, 'release');
  const releaseId = optional(src, 'release-id');
  const rollback = boolOf(src, 'rollback');
  for (const [name, value] of [
    ['release', release],
    ['release-id', releaseId],
  ] as const) {
    if (value !== undefined && !ReleaseIdSchema.safeParse(value).success)
      throw bad(name, `"${value}" is not a release id (letters, digits, _ . -, at most 64)`);
  }
  if (rollback) {
    if (artifact !== undefined)
      throw bad(
        'rollback',
        'a rollback sends nothing: remove artifact (or set rollback: false to deploy it)',
      );
    if (releaseId !== undefined)
      throw bad(
        'release-id',
        'names the release made from artifact; with rollback, name the target with release',
      );
    return { kind: 'rollback', ...(release !== undefined && { release }) };
  }
  if (artifact !== undefined && release !== undefined)
    throw bad(
      'release',
      'give artifact (deploy a new release) or release (deploy one the hosts hold), not both',
    );
  if (release !== undefined) {
    if (releaseId !== undefined)
      throw bad(
        'release-id',
        'names the release made from artifact; a redeploy names it with release',
      );
    return { kind: 'redeploy', release };
  }
  if (artifact === undefined)
    throw bad(
      'artifact',
      'nothing to deploy: give artifact (a directory or .tar.gz), or release (a redeploy), or rollback: true',
    );
  if (!existsSync(artifact))
    throw bad('artifact', `${artifact} does not exist (paths are relative to the workspace)`);
  const isDir = statSync(artifact).isDirectory();
  if (!isDir && !/\.(tar\.gz|tgz)$/.test(artifact))
    throw bad('artifact', `${artifact} is neither a directory nor a .tar.gz`);
  return { kind: 'deploy', artifact, ...(releaseId !== undefined && { releaseId }) };
}
