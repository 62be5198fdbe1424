import { BatonError, errorMessage } from '../errors.js';
import { normalizeFingerprint } from '../transport/known-hosts.js';
import { parseSshTarget } from '../transport/ssh-target.js';

/** One host of the `hosts` input, read and checked. */
export interface HostSpec {
  /** How the log, the summary and the report name it: the target as written, unique. */
  label: string;
  /** `user@host:port`, the user filled in from `username` when the line had none. */
  target: string;
  /** This host's channel, when its line says: a TCP port on its loopback or a socket path. */
  agentPort?: number;
  agentSocket?: string;
  /** This host's own `SHA256:…` fingerprint, when its line gives one. */
  fingerprint?: string;
}

const bad = (what: string) => new BatonError('USAGE', `input hosts: ${what}`);

/**
 * Reads `hosts`: one host per line or comma-separated, each `[user@]host[:ssh-port]` followed
 * by optional `agent-port=N`, `agent-socket=PATH` and `fingerprint=SHA256:…` words.
 */
export function parseHosts(text: string, username: string | undefined): HostSpec[] {
  const items = text
    .split(/[\n,]/)
    .map((s) => s.trim())
    .filter((s) => s !== '' && !s.startsWith('#'));
  if (items.length === 0) throw bad('no host given: write one user@host per line');
  const specs = items.map((item) => parseHost(item, username));
  const seen = new Map<string, number>();
  for (const s of specs) seen.set(s.label, (seen.get(s.label) ?? 0) + 1);
  // The same SSH target twice is two agents on one machine (as in a test): tell them apart.
  for (const s of specs)
    if (seen.get(s.label)! > 1 && (s.agentPort !== undefined || s.agentSocket !== undefined))
      s.label = `${s.label}#${s.agentPort ?? s.agentSocket}`;
  const labels = new Set<string>();
  for (const s of specs) {
    if (labels.has(s.label))
      throw bad(`${s.label} is listed twice (give each a distinct agent-port= or agent-socket=)`);
    labels.add(s.label);
  }
  return specs;
}

function parseHost(item: string, username: string | undefined): HostSpec {
  const [written, ...words] = item.split(/\s+/);
  let text = written!;
  if (!text.includes('@')) {
    if (username === undefined)
      throw bad(`"${text}" has no user: write user@${text}, or set the username input`);
    text = `${username}@${text}`;
  }
  let target;
  try {
    target = parseSshTarget(text);
  } catch (err) {
    throw bad(errorMessage(err));
  }
  const host = target.host.includes(':') ? `[${target.host}]` : target.host;
  const spec: HostSpec = {
    label: written!.includes('@') ? written! : text,
    target: `${target.username}@${host}:${target.port}`,
  };
  for (const word of words) {
    const eq = word.indexOf('=');
    const key = eq === -1 ? word : word.slice(0, eq);
    const value = eq === -1 ? '' : word.slice(eq + 1);
    if (key === 'agent-port') {
      if (!/^\d{1,5}$/.test(value) || Number(value) < 1 || Number(value) > 65535)
        throw bad(`${written}: agent-port=${value} is not a port from 1 to 65535`);
      spec.agentPort = Number(value);
    } else if (key === 'agent-socket') {
      if (!value.startsWith('/'))
        throw bad(`${written}: agent-socket=${value} must be an absolute path on the host`);
      spec.agentSocket = value;
    } else if (key === 'fingerprint') {
      try {
        spec.fingerprint = normalizeFingerprint(value);
      } catch (err) {
        throw bad(`${written}: ${errorMessage(err)}`);
      }
    } else {
      throw bad(
        `${written}: unknown word "${word}" (after the host come only agent-port=N, agent-socket=PATH, fingerprint=SHA256:…)`,
      );
    }
  }
  if (spec.agentPort !== undefined && spec.agentSocket !== undefined)
    throw bad(`${written}: give agent-port= or agent-socket=, not both`);
  return spec;
}
