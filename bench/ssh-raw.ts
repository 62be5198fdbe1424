// The baselines of bench/transfer.ts: a file piped into `cat > /dev/null` on the far side of a
// real sshd, by OpenSSH's client and by ssh2's, with the cipher each negotiated.
import { spawn } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import ssh2, { type Algorithms, type ConnectConfig } from 'ssh2';
import type { TestSshd } from '../support/sshd.js';
import { withDeadline } from '../support/deadline.js';

// ssh2 is CommonJS and Node's ESM loader finds only some of its named exports.
const { Client } = ssh2;

const SSH = '/usr/bin/ssh';
/** A whole transfer at a few MiB/s still fits; only a hung one hits it. */
const TRANSFER_DEADLINE_MS = 10 * 60_000;
/** Lines of `ssh -v` output kept for an error message. */
const STDERR_LINES = 40;

/** The cipher preference of src/transport/ssh.ts (not exported there), for the ssh2 row. */
export const BATON_CIPHERS: Algorithms['cipher'] = [
  'aes128-gcm@openssh.com',
  'aes256-gcm@openssh.com',
  'chacha20-poly1305@openssh.com',
  'aes128-ctr',
  'aes192-ctr',
  'aes256-ctr',
];

export interface RawRun {
  /** Whole command: connect, login, transfer, exit. */
  ms: number;
  /** Client → server cipher negotiated. */
  cipher: string;
}

/** `ssh` options shared by every OpenSSH run: this sshd, this key, no user config. */
function sshArgs(sshd: TestSshd, knownHostsFile: string, cipher?: string): string[] {
  return [
    '-F',
    '/dev/null',
    '-v',
    '-T',
    '-p',
    String(sshd.port),
    '-i',
    sshd.clientKey.path,
    '-o',
    `UserKnownHostsFile=${knownHostsFile}`,
    '-o',
    'StrictHostKeyChecking=yes',
    '-o',
    'BatchMode=yes',
    '-o',
    'IdentitiesOnly=yes',
    ...(cipher === undefined ? [] : ['-c', cipher]),
    `${sshd.user}@127.0.0.1`,
  ];
}

/**
 * `ssh host '<command>'` with `stdinFile` (or nothing) as its stdin, timed from spawn to
 * 'close'. `-v` is there only for the `kex: client->server cipher:` line; it logs nothing per
 * packet.
 */
export async function opensshRun(
  sshd: TestSshd,
  knownHostsFile: string,
  command: string,
  stdinFile: string | undefined,
  cipher?: string,
): Promise<RawRun> {
  const input = stdinFile === undefined ? undefined : await open(stdinFile, 'r');
  try {
    const stderr: string[] = [];
    let found: string | undefined;
    const t0 = performance.now();
    const proc = spawn(SSH, [...sshArgs(sshd, knownHostsFile, cipher), command], {
      stdio: [input?.fd ?? 'ignore', 'ignore', 'pipe'],
    });
    let pending = '';
    proc.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
      const lines = (pending + chunk).split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) {
        found ??= /kex: client->server cipher: (\S+)/.exec(line)?.[1];
        stderr.push(line);
        if (stderr.length > STDERR_LINES) stderr.shift();
      }
    });
    const ms = await withDeadline(
      new Promise<number>((resolve, reject) => {
        proc.once('error', reject);
        proc.once('close', (code, signal) => {
          if (code === 0) resolve(performance.now() - t0);
          else reject(new Error(`ssh ${command}: ${signal ?? code}\n${stderr.join('\n')}`));
        });
      }),
      `ssh ${command}`,
      TRANSFER_DEADLINE_MS,
    );
    return { ms, cipher: found ?? '?' };
  } finally {
    await input?.close();
  }
}

/** An ssh2 connection with baton's cipher order, for exec runs timed on their own. */
export interface Ssh2Session {
  /** Client → server cipher negotiated. */
  cipher: string;
  /**
   * Runs `command` with `stdinFile` (or nothing) piped in; ms from the exec request to the
   * channel's close.
   */
  exec(command: string, stdinFile?: string): Promise<number>;
  close(): void;
}

/** Logs in to `sshd` with ssh2, ciphers in baton's order. */
export async function ssh2Session(sshd: TestSshd): Promise<Ssh2Session> {
  const client = new Client();
  const hostKey = Buffer.from(sshd.knownHostsLine.split(' ')[2]!, 'base64');
  let cipher = '?';
  client.once('handshake', (negotiated) => (cipher = negotiated.cs.cipher));
  const config: ConnectConfig = {
    host: '127.0.0.1',
    port: sshd.port,
    username: sshd.user,
    privateKey: sshd.clientKey.privateKey,
    hostVerifier: (key: Buffer) => key.equals(hostKey),
    algorithms: { cipher: BATON_CIPHERS },
  };
  try {
    await withDeadline(
      new Promise<void>((resolve, reject) => {
        client.once('ready', resolve);
        client.once('error', reject);
        client.connect(config);
      }),
      'ssh2 login',
    );
  } catch (err) {
    client.destroy();
    throw err;
  }
  const exec = (command: string, stdinFile?: string) => {
    const t0 = performance.now();
    return withDeadline(
      new Promise<number>((resolve, reject) => {
        client.exec(command, (err, channel) => {
          if (err) return reject(err);
          let code: number | undefined;
          channel.once('exit', (c: number | null) => (code = c ?? undefined));
          channel.once('close', () =>
            code === 0
              ? resolve(performance.now() - t0)
              : reject(new Error(`ssh2 exec ${command}: exit ${code}`)),
          );
          channel.resume();
          if (stdinFile === undefined) return void channel.end();
          const source = createReadStream(stdinFile, { highWaterMark: 256 * 1024 });
          source.once('error', reject);
          source.pipe(channel);
        });
      }),
      `ssh2 exec ${command}`,
      TRANSFER_DEADLINE_MS,
    );
  };
  return { cipher, exec, close: () => client.end() };
}

/**
 * Records the client → server cipher of every ssh2 connection made from now on (baton's own,
 * inside src/transport/ssh.ts, which does not say): a listener added to each client as it
 * connects, nothing else changed. Returns what was seen and the function that stops it.
 */
export function watchSsh2Ciphers(): { seen: string[]; stop(): void } {
  const seen: string[] = [];
  const proto = Client.prototype;
  const original = Object.getOwnPropertyDescriptor(proto, 'connect')!;
  const connect = original.value as (this: ssh2.Client, config: ConnectConfig) => ssh2.Client;
  Object.defineProperty(proto, 'connect', {
    ...original,
    value(this: ssh2.Client, config: ConnectConfig) {
      this.once('handshake', (negotiated) => seen.push(negotiated.cs.cipher));
      return connect.call(this, config);
    },
  });
  return { seen, stop: () => Object.defineProperty(proto, 'connect', original) };
}
