import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { describe, it } from 'node:test';
import { createInterface } from 'node:readline';
import { releases, webApp, writeConfig } from '../../support/agent-config.js';
import { startAgent } from '../../support/agent-process.js';
import { control } from '../../support/control.js';
import { waitUntil, withDeadline } from '../../support/deadline.js';
import { tempDir } from '../../support/temp-dir.js';

/** What systemd would receive on its notify socket, as a test can see it. */
interface Received {
  messages: string[];
  close(): void;
}

/** A path NOTIFY_SOCKET, played by node-unix-socket in the test (as systemd's would be). */
function pathReceiver(file: string): Received {
  const { DgramSocket } = createRequire(import.meta.url)('node-unix-socket') as {
    DgramSocket: new () => {
      on(e: 'data', fn: (b: Buffer) => void): void;
      bind(p: string): void;
      close(): void;
    };
  };
  const socket = new DgramSocket();
  const messages: string[] = [];
  socket.on('data', (b) => messages.push(b.toString()));
  socket.bind(file);
  return { messages, close: () => socket.close() };
}

/**
 * An abstract NOTIFY_SOCKET (`@name`), received by Python with SO_PASSCRED: each message comes
 * with the pid the kernel vouches for as its sender, as systemd checks for NotifyAccess=main.
 */
function abstractReceiver(name: string): Received & { senders: number[]; ready: Promise<void> } {
  const script = `
import json, socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(b"\\0" + ${JSON.stringify(name)}.encode())
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
print("bound", flush=True)
while True:
    msg, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(12))
    pid = next((struct.unpack("iII", d)[0] for l, t, d in anc if t == socket.SCM_CREDENTIALS), 0)
    print(json.dumps({"pid": pid, "msg": msg.decode()}), flush=True)
`;
  const proc = spawn('python3', ['-c', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  const messages: string[] = [];
  const senders: number[] = [];
  let bound: () => void = () => undefined;
  const ready = new Promise<void>((resolve) => (bound = resolve));
  createInterface({ input: proc.stdout }).on('line', (line) => {
    if (line === 'bound') return bound();
    const { pid, msg } = JSON.parse(line) as { pid: number; msg: string };
    messages.push(msg);
    senders.push(pid);
  });
  return { messages, senders, ready, close: () => proc.kill() };
}

const has = (r: Received, pred: (m: string) => boolean) => r.messages.some(pred);

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('the agent as a Type=notify systemd service', () => {
  it('says READY=1 with each app release in STATUS=, pings the watchdog, names its successor with MAINPID= and says STOPPING=1', async () => {
    const tmp = await tempDir();
    const socket = path.join(tmp.dir, 'systemd-notify');
    const systemd = pathReceiver(socket);
    let successor: number | undefined;
    try {
      const [v1, v2] = await releases(tmp.dir, 'v1', 'v2');
      const config = await writeConfig(tmp.dir, {
        stateDir: './state',
        apps: [webApp({ release: v1 })],
      });
      const agent = await startAgent(config, {
        env: { NOTIFY_SOCKET: socket, WATCHDOG_USEC: '400000' },
        ownPid: ['WATCHDOG_PID'],
      });
      await waitUntil(() => has(systemd, (m) => m.startsWith('READY=1')), 'READY=1');
      const ready = systemd.messages.find((m) => m.startsWith('READY=1'))!;
      assert.match(ready, /^READY=1\nSTATUS=web: v1 \(running\)$/);
      // WATCHDOG_USEC=400 ms: pings every 200 ms.
      await waitUntil(
        () => systemd.messages.filter((m) => m === 'WATCHDOG=1').length >= 2,
        'watchdog pings',
      );
      await control(agent.socket, { method: 'deploy', app: 'web', releaseDir: v2! });
      await waitUntil(() => has(systemd, (m) => m === 'STATUS=web: v2 (running)'), 'STATUS for v2');

      const { result } = await control(agent.socket, { method: 'upgrade' });
      successor = (result as { pid: number }).pid;
      await waitUntil(() => has(systemd, (m) => m === `MAINPID=${successor}`), 'MAINPID=');
      assert.equal(await withDeadline(agent.exited, 'old agent exit'), 0);
      // Pings go on once the old agent is gone: the successor sends them.
      const before = systemd.messages.length;
      await waitUntil(
        () => systemd.messages.slice(before).filter((m) => m === 'WATCHDOG=1').length >= 2,
        'watchdog pings from the new agent',
      );
      // A second upgrade hands the watchdog on again: WATCHDOG_PID from systemd names only the
      // first agent.
      const first = successor;
      const next = await control(agent.socket, { method: 'upgrade' });
      successor = (next.result as { pid: number }).pid;
      await waitUntil(
        () => has(systemd, (m) => m === `MAINPID=${successor}`),
        'the second MAINPID=',
      );
      await waitUntil(() => !alive(first), 'the first successor to exit');
      const later = systemd.messages.length;
      await waitUntil(
        () => systemd.messages.slice(later).filter((m) => m === 'WATCHDOG=1').length >= 2,
        'watchdog pings from the agent after two upgrades',
      );
      process.kill(successor, 'SIGTERM');
      await waitUntil(() => has(systemd, (m) => m === 'STOPPING=1'), 'STOPPING=1');
      await waitUntil(() => !alive(successor!), 'the new agent to stop');
      successor = undefined;
    } finally {
      if (successor !== undefined) process.kill(successor, 'SIGKILL');
      systemd.close();
      await rm(socket, { force: true });
      await tmp.cleanup();
    }
  });

  it('reaches an abstract NOTIFY_SOCKET (@…) with its own pid as the sender', async () => {
    const tmp = await tempDir();
    const name = `baton-test-${process.pid}-${Date.now()}`;
    const systemd = abstractReceiver(name);
    try {
      await withDeadline(systemd.ready, 'the receiver to bind');
      const [v1] = await releases(tmp.dir, 'v1');
      const config = await writeConfig(tmp.dir, {
        stateDir: './state',
        apps: [webApp({ release: v1 })],
      });
      const agent = await startAgent(config, { env: { NOTIFY_SOCKET: `@${name}` } });
      try {
        await waitUntil(() => has(systemd, (m) => m.includes('READY=1')), 'READY=1');
        const i = systemd.messages.findIndex((m) => m.includes('READY=1'));
        assert.match(systemd.messages[i]!, /STATUS=web: v1 \(running\)/);
        assert.equal(systemd.senders[i], agent.pid, 'sent with the agent as the sender');
      } finally {
        await agent.stop();
      }
    } finally {
      systemd.close();
      await tmp.cleanup();
    }
  });
});
