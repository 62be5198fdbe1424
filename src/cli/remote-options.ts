import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { BatonError, errorMessage } from '../errors.js';
import { checkToken, readTokenFile } from '../transport/auth.js';
import { DEFAULT_CHANNEL_SOCKET } from '../protocol/channel-config.js';
import { directDialer, sshDialer, type Dialer } from '../transport/dialer.js';
import type { SshOptions } from '../transport/ssh.js';

/** The command-line options that say how to reach an agent (parseArgs `options` form). */
export const REMOTE_OPTIONS = {
  host: { type: 'string' },
  agent: { type: 'string' },
  'agent-port': { type: 'string' },
  'agent-socket': { type: 'string' },
  'token-file': { type: 'string' },
  identity: { type: 'string', short: 'i' },
  'known-hosts': { type: 'string' },
  fingerprint: { type: 'string' },
  'accept-unknown-host-key': { type: 'boolean', default: false },
  jump: { type: 'string', short: 'J' },
  'connect-timeout': { type: 'string' },
  ca: { type: 'string' },
  'deploy-id': { type: 'string' },
} as const;

export const REMOTE_USAGE = `how to reach the agent (one of):
  --host USER@HOST[:PORT]     through SSH to the agent's socket (the SSH user must be allowed to open it:
                              root, or a member of the agent's channel.socketGroup)
    --agent-socket PATH       the agent's channel.socket (default ${DEFAULT_CHANNEL_SOCKET})
    --agent-port N            or a TCP port on the host's loopback (the agent's channel.port)
    -i, --identity FILE       private key (passphrase from $BATON_SSH_PASSPHRASE); else ssh-agent ($SSH_AUTH_SOCK)
    --known-hosts FILE        host keys to trust (default ~/.ssh/known_hosts)
    --fingerprint SHA256:...  or pin the host key's fingerprint
    --accept-unknown-host-key trust a host key nothing vouches for (never a changed one)
    -J, --jump USER@HOST[:PORT][,...]   ProxyJump through these hosts
    --connect-timeout SECONDS (default 15)
  --agent unix:PATH | wss://HOST:PORT | ws://127.0.0.1:PORT   directly: this host's socket,
                              or TCP (--ca FILE to pin a CA for wss)
  token: --token-file FILE or $BATON_TOKEN (the agent's channel.tokenFile)`;

export interface RemoteValues {
  host?: string;
  agent?: string;
  'agent-port'?: string;
  'agent-socket'?: string;
  'token-file'?: string;
  identity?: string;
  'known-hosts'?: string;
  fingerprint?: string;
  'accept-unknown-host-key'?: boolean;
  jump?: string;
  'connect-timeout'?: string;
  ca?: string;
  'deploy-id'?: string;
}

async function readText(file: string, what: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    throw new BatonError('USAGE', `cannot read ${what} ${file}: ${errorMessage(err)}`);
  }
}

function positiveNumber(text: string | undefined, flag: string, fallback: number): number {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!Number.isFinite(n) || n <= 0)
    throw new BatonError('USAGE', `${flag} ${text}: expected a positive number`);
  return n;
}

/** True when the options name an agent to reach over the network (else: this host's socket). */
export function isRemote(values: RemoteValues): boolean {
  return values.host !== undefined || values.agent !== undefined;
}

/** The dialer and token the options describe. */
export async function remoteTarget(
  values: RemoteValues,
  env: NodeJS.ProcessEnv,
  log: (line: string) => void,
): Promise<{ dialer: Dialer; token: string; hostLabel: string }> {
  if (values.host !== undefined && values.agent !== undefined)
    throw new BatonError('USAGE', 'give --host (SSH) or --agent (URL), not both');
  const token = values['token-file']
    ? await readTokenFile(values['token-file'], { private: false })
    : env.BATON_TOKEN
      ? checkToken(env.BATON_TOKEN, '$BATON_TOKEN')
      : undefined;
  if (token === undefined)
    throw new BatonError('USAGE', "the agent's token is needed: --token-file FILE or $BATON_TOKEN");
  const timeoutMs = positiveNumber(values['connect-timeout'], '--connect-timeout', 15) * 1000;
  if (values.agent !== undefined) {
    const ca = values.ca !== undefined ? await readText(values.ca, 'CA file') : undefined;
    const dialer = directDialer(values.agent, { ca, connectTimeoutMs: timeoutMs });
    const hostLabel = values.agent.startsWith('unix:') ? 'localhost' : new URL(values.agent).host;
    return { dialer, token, hostLabel };
  }
  if (values.host === undefined) throw new BatonError('USAGE', `where to?\n${REMOTE_USAGE}`);
  const ssh: SshOptions = {
    target: values.host,
    connectTimeoutMs: timeoutMs,
    log,
    acceptUnknownHostKey: values['accept-unknown-host-key'] ?? false,
  };
  if (values.jump) ssh.jump = values.jump.split(',').filter(Boolean);
  if (values.identity !== undefined) {
    ssh.privateKey = await readText(values.identity, 'identity');
    if (env.BATON_SSH_PASSPHRASE) ssh.passphrase = env.BATON_SSH_PASSPHRASE;
  } else if (env.SSH_AUTH_SOCK) {
    ssh.agent = env.SSH_AUTH_SOCK;
  } else {
    throw new BatonError('USAGE', 'no SSH key: give -i FILE, or run an ssh-agent ($SSH_AUTH_SOCK)');
  }
  if (values.fingerprint !== undefined) ssh.fingerprint = values.fingerprint;
  const knownHosts = values['known-hosts'] ?? path.join(os.homedir(), '.ssh', 'known_hosts');
  if (values['known-hosts'] !== undefined || existsSync(knownHosts))
    ssh.knownHosts = await readText(knownHosts, 'known_hosts');
  if (values['agent-port'] !== undefined && values['agent-socket'] !== undefined)
    throw new BatonError('USAGE', 'give --agent-socket or --agent-port, not both');
  const to =
    values['agent-port'] !== undefined
      ? positiveNumber(values['agent-port'], '--agent-port', 0)
      : (values['agent-socket'] ?? DEFAULT_CHANNEL_SOCKET);
  if (typeof to === 'string' && !to.startsWith('/'))
    throw new BatonError('USAGE', `--agent-socket ${to}: expected an absolute path on the host`);
  return { dialer: sshDialer(ssh, to), token, hostLabel: values.host };
}
