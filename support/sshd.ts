// Shared by the tests, the benches and the demo (see README.md in this folder).
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import ssh2, { type Connection } from 'ssh2';
import { fingerprint } from '../src/transport/known-hosts.js';
import { withDeadline } from './deadline.js';
import { freePort } from './free-port.js';
import { tempDir } from './temp-dir.js';

// ssh2 is CommonJS and Node's ESM loader finds only some of its named exports.
const { Server, utils } = ssh2;

const run = promisify(execFile);
const SSHD = '/usr/sbin/sshd';
const SSH_KEYGEN = '/usr/bin/ssh-keygen';

/** Which server `startSshd` runs: the real OpenSSH, or ssh2's when sshd is not installed. */
export type SshdKind = 'openssh' | 'ssh2';

/**
 * Whether the real OpenSSH server is here. `BATON_TEST_SSHD=ssh2` forces the fallback, to
 * check that it still works.
 */
export function sshAvailable(): boolean {
  return existsSync(SSHD) && process.env.BATON_TEST_SSHD !== 'ssh2';
}

/** Whether `ssh-agent` and `ssh-add` are here (openssh-client), for `startSshAgent`. */
export function sshAgentAvailable(): boolean {
  return existsSync('/usr/bin/ssh-agent') && existsSync('/usr/bin/ssh-add');
}

export interface KeyPair {
  path: string;
  privateKey: string;
  /** The `ssh-ed25519 AAAA… comment` line. */
  publicKey: string;
}

/** A running SSH server on 127.0.0.1 that lets `user` in with `clientKey` or `encryptedKey`. */
export interface TestSshd {
  kind: SshdKind;
  port: number;
  user: string;
  /** `user@127.0.0.1:port`, for `openSsh`. */
  target: string;
  /** The known_hosts line for `[127.0.0.1]:port`. */
  knownHostsLine: string;
  /** The host key's `SHA256:…`, as `ssh-keygen -lf` prints it (when ssh-keygen is here). */
  fingerprint: string;
  /** Listed in authorized_keys. */
  clientKey: KeyPair;
  /** Listed in authorized_keys, encrypted with `passphrase`. */
  encryptedKey: KeyPair;
  passphrase: string;
  /** A valid key that is not in authorized_keys. */
  strangerKey: KeyPair;
  /** The server's last log lines (bounded), for failure messages. */
  log: string[];
  /** Stops the server it started (by its pid) and removes its files. */
  stop(): Promise<void>;
}

const LOG_LINES_KEPT = 200;

/**
 * Starts OpenSSH's sshd on a free loopback port with fresh keys in a temp dir; where sshd is
 * not installed, says so loudly and runs ssh2's server instead (never under CI).
 */
export async function startSshd(): Promise<TestSshd> {
  const tmp = await tempDir('baton-sshd-');
  try {
    const openssh = sshAvailable();
    // CI must test against the real OpenSSH: .ci/run installs it, so its absence is a broken run.
    if (!openssh && process.env.CI && process.env.BATON_TEST_SSHD !== 'ssh2')
      throw new Error(
        `CI=${process.env.CI} but ${SSHD} is missing: install openssh-server (.ci/run does), or set BATON_TEST_SSHD=ssh2 to test against ssh2's server on purpose`,
      );
    if (!openssh)
      process.stderr.write(
        '\n!!!!! sshd not found (apt-get install openssh-server): FALLING BACK to ssh2’s ' +
          'built-in server; this is not the real OpenSSH !!!!!\n\n',
      );
    const passphrase = 'correct horse battery staple';
    const hostKey = await keygen(tmp.dir, 'ssh_host_ed25519_key');
    const clientKey = await keygen(tmp.dir, 'client_ed25519');
    const encryptedKey = await keygen(tmp.dir, 'client_encrypted_ed25519', passphrase);
    const strangerKey = await keygen(tmp.dir, 'stranger_ed25519');
    const authorized = [clientKey.publicKey, encryptedKey.publicKey];
    await writeFile(path.join(tmp.dir, 'authorized_keys'), authorized.join('\n') + '\n');
    const user = os.userInfo().username;
    const [type, blob = ''] = hostKey.publicKey.split(' ');
    // OpenSSH's own reckoning where it is here, so that tests check ours against it.
    const hostFingerprint = existsSync(SSH_KEYGEN)
      ? await sshKeygenFingerprint(`${hostKey.path}.pub`)
      : fingerprint(Buffer.from(blob, 'base64'));
    const log: string[] = [];
    const server = openssh
      ? await startOpenSsh(tmp.dir, log)
      : await startSsh2Server(hostKey, authorized, user, log);
    return {
      kind: openssh ? 'openssh' : 'ssh2',
      port: server.port,
      user,
      target: `${user}@127.0.0.1:${server.port}`,
      knownHostsLine: `[127.0.0.1]:${server.port} ${type} ${blob}`,
      fingerprint: hostFingerprint,
      clientKey,
      encryptedKey,
      passphrase,
      strangerKey,
      log,
      stop: async () => {
        await server.stop();
        await tmp.cleanup();
      },
    };
  } catch (err) {
    await tmp.cleanup();
    throw err;
  }
}

async function startOpenSsh(dir: string, log: string[]) {
  // sshd's privilege separation chroots into this; containers often lack it.
  await mkdir('/run/sshd', { recursive: true, mode: 0o755 });
  const version = (await run(SSHD, ['-V']).catch((e: { stderr?: string }) => e)).stderr ?? '';
  const [, major = '0', minor = '0'] = /OpenSSH_(\d+)\.(\d+)/.exec(version) ?? [];
  const penalties = Number(major) * 100 + Number(minor) >= 908;
  // A port can be taken between freePort() and sshd's bind: try a few.
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const config = path.join(dir, 'sshd_config');
    await writeFile(
      config,
      [
        `Port ${port}`,
        'ListenAddress 127.0.0.1',
        `HostKey ${path.join(dir, 'ssh_host_ed25519_key')}`,
        `PidFile ${path.join(dir, 'sshd.pid')}`,
        `AuthorizedKeysFile ${path.join(dir, 'authorized_keys')}`,
        // The temp dir's modes are not what StrictModes wants for a home directory.
        'StrictModes no',
        'UsePAM no',
        'PasswordAuthentication no',
        'KbdInteractiveAuthentication no',
        'PubkeyAuthentication yes',
        'PermitRootLogin prohibit-password',
        'AllowTcpForwarding yes',
        // The default, said out loud: the channel is reached on the agent's unix socket.
        'AllowStreamLocalForwarding yes',
        'X11Forwarding no',
        'PermitTTY no',
        'PrintMotd no',
        // Tests connect many times, and on purpose fail to log in, from the same address.
        'MaxStartups 100',
        ...(penalties ? ['PerSourcePenalties no'] : []),
        '',
      ].join('\n'),
    );
    const proc = spawn(SSHD, ['-D', '-e', '-f', config], { stdio: ['ignore', 'ignore', 'pipe'] });
    const listening = new Promise<boolean>((resolve, reject) => {
      let pending = '';
      proc.stderr.setEncoding('utf8').on('data', (chunk: string) => {
        const lines = (pending + chunk).split('\n');
        pending = lines.pop() ?? '';
        for (const line of lines) {
          log.push(line);
          if (log.length > LOG_LINES_KEPT) log.shift();
          if (line.includes(`Server listening on 127.0.0.1 port ${port}`)) resolve(true);
        }
      });
      proc.once('error', reject);
      proc.once('close', () => resolve(false));
    });
    const stop = () => stopProcess(proc, 'sshd');
    let started: boolean;
    try {
      started = await withDeadline(listening, 'sshd to listen');
    } catch (err) {
      await stop();
      throw err;
    }
    if (started) return { port, stop };
    const bindFailed = log.some((l) => l.includes('Address already in use'));
    if (!bindFailed || attempt === 3)
      throw new Error(`sshd did not start:\n${log.slice(-20).join('\n')}`);
  }
}

/** ssh2's server with public-key login, `direct-tcpip` and `direct-streamlocal`: only when sshd is missing. */
async function startSsh2Server(
  hostKey: KeyPair,
  authorized: string[],
  user: string,
  log: string[],
) {
  const allowed = authorized.map((line) => utils.parseKey(line));
  const connections = new Set<Connection>();
  const server = new Server({ hostKeys: [hostKey.privateKey] }, (conn) => {
    connections.add(conn);
    conn.on('close', () => connections.delete(conn));
    conn.on('error', (err) => log.push(`connection error: ${err.message}`));
    conn.on('authentication', (ctx) => {
      if (ctx.method !== 'publickey' || ctx.username !== user) return ctx.reject(['publickey']);
      const key = allowed.find(
        (k) => !(k instanceof Error) && k.getPublicSSH().equals(ctx.key.data),
      );
      if (key === undefined || key instanceof Error) return ctx.reject(['publickey']);
      // Without a signature the client only asks whether the key would do.
      if (ctx.signature === undefined) return ctx.accept();
      if (key.verify(ctx.blob!, ctx.signature, ctx.hashAlgo)) ctx.accept();
      else ctx.reject(['publickey']);
    });
    // direct-streamlocal@openssh.com: the agent's unix socket, as OpenSSH forwards to it.
    conn.on('openssh.streamlocal', (accept, reject, info) =>
      forward(net.connect(info.socketPath), accept, reject),
    );
    conn.on('tcpip', (accept, reject, info) =>
      forward(net.connect(info.destPort, info.destIP), accept, reject),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as net.AddressInfo;
  return {
    port,
    stop: async () => {
      for (const conn of connections) conn.end();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** A running ssh-agent holding one key. */
export interface TestSshAgent {
  /** The SSH_AUTH_SOCK path. */
  socket: string;
  pid: number;
  /** Stops the agent it started, by its pid. */
  stop(): Promise<void>;
}

/** Starts `ssh-agent` in the foreground on a socket in `dir` and adds `keyPath` to it. */
export async function startSshAgent(dir: string, keyPath: string): Promise<TestSshAgent> {
  const socket = path.join(dir, 'agent.sock');
  const proc = spawn('ssh-agent', ['-D', '-a', socket], { stdio: ['ignore', 'pipe', 'pipe'] });
  const agent = { socket, pid: proc.pid!, stop: () => stopProcess(proc, 'ssh-agent') };
  try {
    let output = '';
    proc.stderr.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
    // It prints SSH_AUTH_SOCK=… once the socket listens.
    await withDeadline(
      new Promise<void>((resolve, reject) => {
        proc.stdout.setEncoding('utf8').on('data', (chunk: string) => {
          output += chunk;
          if (output.includes('SSH_AUTH_SOCK=')) resolve();
        });
        proc.once('error', reject);
        proc.once('close', () => reject(new Error(`ssh-agent exited:\n${output}`)));
      }),
      'ssh-agent to listen',
    );
    await run('ssh-add', [keyPath], { env: { ...process.env, SSH_AUTH_SOCK: socket } });
    return agent;
  } catch (err) {
    await agent.stop();
    throw err;
  }
}

/**
 * SIGTERM, then SIGKILL after a deadline. Done at 'exit', not 'close': sshd's per-connection
 * children inherit its stderr, so 'close' would wait for every session to end.
 */
async function stopProcess(proc: ChildProcess, what: string): Promise<void> {
  if (proc.exitCode === null && proc.signalCode === null) {
    const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 5000).unref();
    await withDeadline(exited, `${what} (pid ${proc.pid}) to stop`).finally(() =>
      clearTimeout(timer),
    );
  }
  proc.stdout?.destroy();
  proc.stderr?.destroy();
}

/** A fresh ed25519 key pair: OpenSSH's ssh-keygen when present, else ssh2's generator. */
async function keygen(dir: string, name: string, passphrase = ''): Promise<KeyPair> {
  const file = path.join(dir, name);
  if (existsSync(SSH_KEYGEN)) {
    await run(SSH_KEYGEN, ['-q', '-t', 'ed25519', '-N', passphrase, '-C', name, '-f', file]);
  } else {
    const cipher = passphrase === '' ? {} : { passphrase, cipher: 'aes256-ctr', rounds: 16 };
    const pair = utils.generateKeyPairSync('ed25519', { comment: name, ...cipher });
    await writeFile(file, pair.private, { mode: 0o600 });
    await writeFile(`${file}.pub`, pair.public + '\n');
  }
  return {
    path: file,
    privateKey: await readFile(file, 'utf8'),
    publicKey: (await readFile(`${file}.pub`, 'utf8')).trim(),
  };
}

/** The fingerprint as OpenSSH computes it, to check ours against. */
async function sshKeygenFingerprint(pubFile: string): Promise<string> {
  const { stdout } = await run(SSH_KEYGEN, ['-l', '-E', 'sha256', '-f', pubFile]);
  const found = /SHA256:[A-Za-z0-9+/]+/.exec(stdout);
  if (!found) throw new Error(`ssh-keygen -lf printed no fingerprint: ${stdout}`);
  return found[0];
}

/** Joins a forwarded SSH channel to `sock` once it connects; refuses the channel if it cannot. */
function forward(
  sock: net.Socket,
  accept: () => ssh2.ServerChannel,
  reject: (() => void) | undefined,
): void {
  sock.once('error', () => reject?.());
  sock.once('connect', () => {
    const channel = accept();
    sock.removeAllListeners('error');
    sock.on('error', () => channel.destroy());
    channel.on('error', () => sock.destroy());
    sock.pipe(channel).pipe(sock);
  });
}
