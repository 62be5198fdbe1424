import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import os from 'node:os';
import { Readable, type Duplex } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { after, before, describe, it } from 'node:test';
import ssh2 from 'ssh2';
import { errorCode, errorMessage } from '../../src/errors.js';
import {
  openSsh,
  parseSshTarget,
  type SshConnection,
  type SshOptions,
} from '../../src/transport/ssh.js';
import { withDeadline } from '../../support/deadline.js';
import { freePort } from '../../support/free-port.js';
import { tempDir } from '../../support/temp-dir.js';
import { sshAgentAvailable, startSshAgent, startSshd, type TestSshd } from '../../support/sshd.js';

const { utils } = ssh2;

/** A TCP server on 127.0.0.1 that tracks its sockets so `stop()` ends them all. */
async function tcpServer(onSocket: (socket: net.Socket) => void) {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    onSocket(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    sockets,
    /** Resolves once every accepted socket has closed. */
    idle: () =>
      Promise.all([...sockets].map((s) => new Promise((resolve) => s.once('close', resolve)))),
    stop: () => {
      for (const socket of sockets) socket.destroy();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** A `log` callback and the lines it received. */
function recorder() {
  const lines: string[] = [];
  return { lines, log: (line: string) => void lines.push(line) };
}

/** Rejects unless `promise` fails with `code`; returns the error for further checks. */
async function failsWith(promise: Promise<unknown>, code: string): Promise<Error> {
  try {
    const value = await withDeadline(promise, `a ${code} failure`);
    if (value && typeof value === 'object' && 'close' in value)
      await (value as SshConnection).close();
  } catch (err) {
    assert.equal(errorCode(err), code, `expected ${code}, got: ${errorMessage(err)}`);
    return err as Error;
  }
  throw new Error(`expected ${code}, but it succeeded`);
}

/**
 * Streams `total` random bytes through an echo and checks they all come back in order.
 * Returns the most bytes ever produced but not yet echoed back: with backpressure working,
 * it stays near what the SSH windows and socket buffers hold, far below `total`.
 */
async function echoRoundTrip(stream: Duplex, total: number): Promise<number> {
  const sent = createHash('sha256');
  const got = createHash('sha256');
  let produced = 0;
  let received = 0;
  let maxInFlight = 0;
  const reading = new Promise<void>((resolve, reject) => {
    stream.on('data', (chunk: Buffer) => {
      got.update(chunk);
      received += chunk.length;
      if (received >= total) resolve();
    });
    stream.once('error', reject);
    stream.once('close', () => reject(new Error(`closed after ${received} of ${total} bytes`)));
  });
  function* chunks() {
    while (produced < total) {
      const chunk = randomBytes(Math.min(64 * 1024, total - produced));
      produced += chunk.length;
      maxInFlight = Math.max(maxInFlight, produced - received);
      sent.update(chunk);
      yield chunk;
    }
  }
  await withDeadline(
    Promise.all([pipeline(Readable.from(chunks()), stream), reading]),
    `${total} bytes echoed`,
  );
  assert.equal(received, total);
  assert.equal(got.digest('hex'), sent.digest('hex'));
  stream.destroy();
  return maxInFlight;
}

// Pure parsing, no server: kept beside the module's other tests.
describe('parseSshTarget', () => {
  const me = os.userInfo().username;

  it('reads user@host[:port], defaulting the user and port 22', () => {
    const cases: [string, [string, string, number]][] = [
      ['deploy@example.com:2222', ['deploy', 'example.com', 2222]],
      ['deploy@example.com', ['deploy', 'example.com', 22]],
      ['example.com', [me, 'example.com', 22]],
      ['10.0.0.5:2200', [me, '10.0.0.5', 2200]],
      ['deploy@[::1]:2222', ['deploy', '::1', 2222]],
      ['[::1]:2222', [me, '::1', 2222]],
      ['[::1]', [me, '::1', 22]],
      ['deploy@fe80::1', ['deploy', 'fe80::1', 22]],
    ];
    for (const [text, [username, host, port]] of cases)
      assert.deepEqual(parseSshTarget(text), { username, host, port }, text);
  });

  it('refuses malformed targets as USAGE', () => {
    const bad = [
      '',
      '@host',
      'user@',
      'user@host:',
      'user@host:0',
      'user@host:65536',
      'user@host:ssh',
    ];
    for (const text of [...bad, 'user@[::1', 'user@[::1]x', 'us er@host', 'user@ho st'])
      assert.throws(
        () => parseSshTarget(text),
        (err) => errorCode(err) === 'USAGE',
        text,
      );
  });
});

describe('SSH tunnel through a real sshd', () => {
  let sshd: TestSshd;
  let echo: Awaited<ReturnType<typeof tcpServer>>;
  /** Connected with the client key, the sshd's known_hosts line and no retries. */
  let base: () => SshOptions;

  before(async () => {
    sshd = await startSshd();
    echo = await tcpServer((socket) => socket.pipe(socket));
    base = () => ({
      target: sshd.target,
      privateKey: sshd.clientKey.privateKey,
      knownHosts: [sshd.knownHostsLine],
      retries: 0,
    });
  });

  after(async () => {
    await echo?.stop();
    await sshd?.stop();
  });

  async function withSsh(opts: SshOptions, fn: (conn: SshConnection) => Promise<void>) {
    const conn = await withDeadline(openSsh(opts), `SSH to ${opts.target}`);
    try {
      await fn(conn);
    } finally {
      await withDeadline(conn.close(), 'SSH close');
    }
  }

  it('forwards to a TCP echo server and round-trips bytes', async () => {
    await withSsh(base(), async (conn) => {
      await echoRoundTrip(await conn.forward('127.0.0.1', echo.port), 100_000);
      // A second channel on the same connection.
      await echoRoundTrip(await conn.forward('127.0.0.1', echo.port), 10);
    });
  });

  it('streams 50 MiB both ways with backpressure', async (t) => {
    await withSsh(base(), async (conn) => {
      const total = 50 * 1024 * 1024;
      const inFlight = await echoRoundTrip(await conn.forward('127.0.0.1', echo.port), total);
      t.diagnostic(`at most ${(inFlight / 1024 / 1024).toFixed(1)} MiB in flight`);
      // Without backpressure the whole payload would be read from its source at once.
      assert.ok(inFlight < 32 * 1024 * 1024, `${inFlight} bytes in flight`);
    });
  });

  it('accepts the host key from a known_hosts line', async () => {
    await withSsh(base(), async () => {});
  });

  it('accepts the host key by its pinned fingerprint', async () => {
    await withSsh(
      { ...base(), knownHosts: undefined, fingerprint: sshd.fingerprint },
      async () => {},
    );
  });

  it('refuses an unknown host key, naming its fingerprint, and does not retry', async () => {
    const { lines, log } = recorder();
    const other = `[127.0.0.1]:${sshd.port + 1} ${sshd.knownHostsLine.split(' ').slice(1).join(' ')}`;
    const opts = { ...base(), knownHosts: [other], retries: 2, retryBaseMs: 1, log };
    const err = await failsWith(openSsh(opts), 'SSH_HOST_KEY_UNKNOWN');
    assert.ok(err.message.includes(sshd.fingerprint));
    assert.deepEqual(lines, []);
  });

  it('accepts an unknown host key with acceptUnknownHostKey, and logs its fingerprint', async () => {
    const { lines, log } = recorder();
    const opts = { ...base(), knownHosts: undefined, acceptUnknownHostKey: true, log };
    await withSsh(opts, async () => {});
    assert.equal(lines.length, 1);
    assert.ok(lines[0]!.includes(sshd.fingerprint));
  });

  it('refuses a mismatched host key even with acceptUnknownHostKey', async () => {
    const [type, blob] = utils.generateKeyPairSync('ed25519').public.split(' ');
    const wrong = `[127.0.0.1]:${sshd.port} ${type} ${blob}`;
    const opts = { ...base(), knownHosts: [wrong], acceptUnknownHostKey: true };
    const err = await failsWith(openSsh(opts), 'SSH_HOST_KEY_MISMATCH');
    assert.ok(err.message.includes(sshd.fingerprint));
    const pinned = { ...base(), knownHosts: undefined, acceptUnknownHostKey: true };
    const fingerprint = 'SHA256:' + 'A'.repeat(43);
    await failsWith(openSsh({ ...pinned, fingerprint }), 'SSH_HOST_KEY_MISMATCH');
  });

  it('refuses a key the server does not know with SSH_AUTH_FAILED, and does not retry', async () => {
    const { lines, log } = recorder();
    const opts = { ...base(), privateKey: sshd.strangerKey.privateKey, retries: 2, log };
    await failsWith(openSsh({ ...opts, retryBaseMs: 1 }), 'SSH_AUTH_FAILED');
    assert.deepEqual(lines, []);
  });

  it('logs in with a passphrase-protected key and the right passphrase', async () => {
    const opts = {
      ...base(),
      privateKey: sshd.encryptedKey.privateKey,
      passphrase: sshd.passphrase,
    };
    await withSsh(opts, async (conn) => {
      await echoRoundTrip(await conn.forward('127.0.0.1', echo.port), 1000);
    });
  });

  it('refuses a passphrase-protected key without a passphrase or with a wrong one', async () => {
    const opts = { ...base(), privateKey: sshd.encryptedKey.privateKey };
    await failsWith(openSsh(opts), 'SSH_KEY_INVALID');
    await failsWith(openSsh({ ...opts, passphrase: 'wrong' }), 'SSH_KEY_INVALID');
  });

  it('logs in through ssh-agent', { skip: !sshAgentAvailable() && 'no ssh-agent' }, async () => {
    const tmp = await tempDir();
    const agent = await startSshAgent(tmp.dir, sshd.clientKey.path);
    try {
      await withSsh({ ...base(), privateKey: undefined, agent: agent.socket }, async (conn) => {
        await echoRoundTrip(await conn.forward('127.0.0.1', echo.port), 1000);
      });
    } finally {
      await agent.stop();
      await tmp.cleanup();
    }
  });

  it('reports an agent socket that is not there as SSH_AUTH_FAILED', async () => {
    const opts = { ...base(), privateKey: undefined, agent: '/nonexistent/agent.sock' };
    await failsWith(openSsh(opts), 'SSH_AUTH_FAILED');
  });

  it('jumps through the sshd to itself (ProxyJump)', async () => {
    await withSsh({ ...base(), jump: [sshd.target] }, async (conn) => {
      await echoRoundTrip(await conn.forward('127.0.0.1', echo.port), 100_000);
    });
  });

  it('checks the jump host key too', async () => {
    // The pin covers the target only; nothing vouches for the jump host's key.
    const opts = { ...base(), knownHosts: undefined, fingerprint: sshd.fingerprint };
    await failsWith(openSsh({ ...opts, jump: [sshd.target] }), 'SSH_HOST_KEY_UNKNOWN');
  });

  it('closes every hop, leaving no socket open', async (t) => {
    // Counted in this process: the echo's sockets from earlier tests must be gone first, and
    // ssh2's fallback server would add its own sockets, closing on their own schedule.
    await withDeadline(echo.idle(), 'echo sockets to close');
    const counted = sshd.kind === 'openssh';
    if (!counted) t.diagnostic('not counting sockets: the SSH server runs in this process');
    const sockets = () =>
      counted ? process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap').length : 0;
    const before = sockets();
    const opts = { ...base(), jump: [sshd.target, sshd.target] };
    const conn = await withDeadline(openSsh(opts), 'SSH through two jumps');
    try {
      assert.equal(sockets(), counted ? before + 1 : 0);
    } finally {
      await withDeadline(conn.close(), 'SSH close');
    }
    assert.equal(await conn.closed, undefined);
    assert.equal(sockets(), before);
    await failsWith(conn.forward('127.0.0.1', echo.port), 'CONNECTION_LOST');
  });

  it('reports a dropped connection through `closed`', async () => {
    // A TCP relay to the sshd that the test can cut.
    const relay = await tcpServer((socket) => {
      const upstream = net.connect(sshd.port, '127.0.0.1');
      upstream.on('error', () => socket.destroy());
      socket.on('close', () => upstream.destroy());
      socket.pipe(upstream).pipe(socket);
    });
    try {
      const target = `${sshd.user}@127.0.0.1:${relay.port}`;
      const opts = { ...base(), target, knownHosts: undefined, fingerprint: sshd.fingerprint };
      const conn = await withDeadline(openSsh(opts), 'SSH through the relay');
      for (const socket of relay.sockets) socket.destroy();
      const lost = await withDeadline(conn.closed, 'the drop to be noticed');
      assert.equal(lost?.code, 'CONNECTION_LOST');
      await conn.close();
    } finally {
      await relay.stop();
    }
  });

  it('times out against a server that accepts but never speaks, and retries that', async () => {
    const silent = await tcpServer(() => {});
    try {
      const { lines, log } = recorder();
      const target = `${sshd.user}@127.0.0.1:${silent.port}`;
      const opts = { ...base(), target, connectTimeoutMs: 1000, retries: 1, retryBaseMs: 1, log };
      await failsWith(openSsh(opts), 'SSH_CONNECT_FAILED');
      assert.equal(lines.length, 1);
    } finally {
      await silent.stop();
    }
  });

  it('retries a refused connection with backoff, then gives up', async () => {
    const { lines, log } = recorder();
    const target = `${sshd.user}@127.0.0.1:${await freePort()}`;
    const opts = { ...base(), target, retries: 2, retryBaseMs: 5, log };
    await failsWith(openSsh(opts), 'SSH_CONNECT_FAILED');
    assert.equal(lines.length, 2);
  });

  it('reports a forward to a closed port as SSH_FORWARD_FAILED and stays usable', async () => {
    const closed = await freePort();
    await withSsh(base(), async (conn) => {
      await failsWith(conn.forward('127.0.0.1', closed), 'SSH_FORWARD_FAILED');
      await echoRoundTrip(await conn.forward('127.0.0.1', echo.port), 1000);
    });
  });
});
