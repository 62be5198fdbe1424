import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, it } from 'node:test';
import type { SupervisorEvent } from '../../src/protocol/events.js';
import { control, controlError } from '../../support/control.js';
import { waitUntil, withDeadline } from '../../support/deadline.js';
import { get } from '../../support/http-get.js';
import { startLoad } from '../../support/load-client.js';
import { FIXTURES } from '../../support/paths.js';
import { withWebAgent } from '../support/web-agent.js';

const run = promisify(execFile);

/** The `web` app as a Python program written for systemd (test/fixtures/sd_notify_app.py). */
function sdApp(env: Record<string, string> = {}, readiness: Record<string, unknown> = {}) {
  return {
    command: ['python3', path.join(FIXTURES, 'sd_notify_app.py')],
    readiness: { type: 'systemd', timeoutMs: 10_000, ...readiness },
    env,
  };
}

interface Status {
  apps: {
    name: string;
    notifyStatus?: string;
    generation?: { number: number; pid: number };
    lastError?: string;
  }[];
}
async function webStatus(socket: string) {
  const { result } = await control(socket, { method: 'status' });
  return (result as Status).apps.find((a) => a.name === 'web')!;
}

function notifyLines(events: readonly SupervisorEvent[], generation: number): string[] {
  return events.flatMap((e) =>
    e.type === 'log' && e.source === `gen-${generation}:notify` ? [e.line] : [],
  );
}

/** Running: a zombie counts as gone (its parent died, and who adopts it may reap it late). */
async function isAlive(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  return stat !== '' && stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
}

type WebCtx = Parameters<Parameters<typeof withWebAgent>[2]>[0];

/** The pid of generation 1's worker (SD_MODE=worker), once it serves. */
async function workerOf(ctx: WebCtx): Promise<number> {
  const serving = await ctx.agent.waitFor(
    (r) => r.type === 'log' && /^worker \d+ serving$/.test(String(r.line)),
    'the worker to serve',
  );
  return Number(/\d+/.exec(String(serving.line))![0]);
}

/** Waits for generation 1's worker to end, and checks it drained on a signal (not SIGKILL). */
async function drainedOnSignal(ctx: WebCtx, workerPid: number): Promise<void> {
  await waitUntil(async () => !(await isAlive(workerPid)), 'the worker to be drained');
  const log = await readFile(path.join(ctx.dir, 'state/logs/web.gen-1.log'), 'utf8');
  assert.match(log, new RegExp(`^worker ${workerPid} drained$`, 'm'), 'it drained on the signal');
}

describe('systemd notify protocol (NOTIFY_SOCKET)', () => {
  it('READY=1 gates the switch; STATUS= lines reach the deploy stream and agent status', async () => {
    await withWebAgent(['v1', 'v2'], sdApp({ SD_READY_DELAY: '0.5' }), async (ctx) => {
      const first = await webStatus(ctx.agent.socket);
      assert.match(first.notifyStatus ?? '', /^serving \d+$/);
      const traffic = startLoad(ctx.port, { workers: 4, keepAlive: false, maxRequests: 20_000 });
      const { events } = await control(ctx.agent.socket, {
        method: 'deploy',
        app: 'web',
        releaseDir: ctx.dirs.v2!,
      });
      const result = await traffic.stop();
      const lines = notifyLines(events, 2);
      assert.ok(
        lines.some((l) => /^STATUS=starting \d+$/.test(l)),
        lines.join('\n'),
      );
      assert.ok(lines.includes('READY=1'), lines.join('\n'));
      // The switch comes after READY=1, never before.
      const order = events.map((e) =>
        e.type === 'phase' ? e.phase : e.type === 'log' && e.line === 'READY=1' ? 'READY' : '',
      );
      assert.ok(order.indexOf('READY') < order.indexOf('switched'), order.join(' '));
      assert.deepEqual(result.errors, {});
      assert.equal(result.non2xx, 0);
      const after = await webStatus(ctx.agent.socket);
      assert.equal(after.generation?.number, 2);
      assert.equal(after.notifyStatus, `serving ${after.generation?.pid}`);
      const body = await get(ctx.port);
      assert.match(body.body, /^sd v2 2 /);
    });
  });

  it('a secret in STATUS= is masked in the stream and in agent status, whatever control characters it holds', async () => {
    const secret = `tok\ten-${Date.now()}`;
    const app = {
      ...sdApp({ SD_STATUS_SUFFIX: ` with ${secret}` }),
      secretEnv: ['SD_STATUS_SUFFIX'],
    };
    await withWebAgent(['v1'], app, async (ctx) => {
      const status = await webStatus(ctx.agent.socket);
      assert.equal(status.notifyStatus, `serving ${status.generation!.pid}***`);
      const shown = JSON.stringify(ctx.agent.events);
      assert.ok(!shown.includes(secret.replace('\t', ' ')), shown);
      assert.ok(
        ctx.agent.events.some(
          (e) => e.type === 'log' && e.line === `STATUS=serving ${status.generation!.pid}***`,
        ),
      );
    });
  });

  it('a generation that never sends READY=1 misses its deadline and the old one keeps serving', async () => {
    await withWebAgent(['v1', 'v2'], sdApp(), async (ctx) => {
      // v2's own baton.yml: ready only after 30 s, with a 1 s deadline.
      await writeFile(
        path.join(ctx.dirs.v2!, 'baton.yml'),
        'readiness: {type: systemd, timeoutMs: 1000}\nenv: {SD_READY_DELAY: "30"}\n',
      );
      const err = await controlError(ctx.agent.socket, {
        method: 'deploy',
        app: 'web',
        releaseDir: ctx.dirs.v2!,
      });
      assert.equal(err.code, 'READINESS_TIMEOUT');
      assert.match((await get(ctx.port)).body, /^sd v1 1 /);
    });
  });

  it('EXTEND_TIMEOUT_USEC= moves the readiness deadline', async () => {
    await withWebAgent(['v1', 'v2'], sdApp(), async (ctx) => {
      // Ready after 6 s with a 3 s deadline (room for a slow Python start on a loaded machine):
      // only the extension (to 11 s) lets it through.
      await writeFile(
        path.join(ctx.dirs.v2!, 'baton.yml'),
        'readiness: {type: systemd, timeoutMs: 3000}\nenv: {SD_MODE: extend, SD_READY_DELAY: "6"}\n',
      );
      const { events } = await control(ctx.agent.socket, {
        method: 'deploy',
        app: 'web',
        releaseDir: ctx.dirs.v2!,
      });
      assert.ok(
        notifyLines(events, 2).some((l) => l.startsWith('EXTEND_TIMEOUT_USEC=')),
        'the extension is in the stream',
      );
      assert.match((await get(ctx.port)).body, /^sd v2 2 /);
    });
  });

  it('MAINPID= of a forking app: the supervisor follows the child and drains it on the next deploy', async () => {
    await withWebAgent(['v1', 'v2', 'v3'], sdApp(), async (ctx) => {
      await writeFile(path.join(ctx.dirs.v2!, 'baton.yml'), 'env: {SD_MODE: fork}\n');
      const { events } = await control(ctx.agent.socket, {
        method: 'deploy',
        app: 'web',
        releaseDir: ctx.dirs.v2!,
      });
      const started = events.find(
        (e) => e.type === 'phase' && e.phase === 'generation-started' && e.generation === 2,
      );
      const firstPid = started?.type === 'phase' ? started.pid! : 0;
      const status = await webStatus(ctx.agent.socket);
      const mainPid = status.generation!.pid;
      assert.notEqual(mainPid, firstPid, 'the status names the forked child, not the parent');
      assert.ok(notifyLines(events, 2).includes(`MAINPID=${mainPid}`));
      // The parent has exited; the child serves, and no crash was seen.
      await waitUntil(async () => !(await isAlive(firstPid)), 'the forking parent to exit');
      assert.equal((await get(ctx.port)).body, `sd v2 2 ${mainPid}\n`);
      assert.ok(!ctx.agent.events.some((e) => e.type === 'phase' && e.phase === 'crashed'));
      await control(ctx.agent.socket, { method: 'deploy', app: 'web', releaseDir: ctx.dirs.v3! });
      await waitUntil(
        async () => !(await isAlive(mainPid)),
        'the forked main process to be drained',
      );
      assert.match((await get(ctx.port)).body, /^sd v3 3 /);
      // One drain signal, not one through its group and another to it as a stray.
      const stopping = ctx.agent.events.filter(
        (e) => e.type === 'log' && e.source === 'gen-2:notify' && e.line === 'STOPPING=1',
      );
      assert.equal(stopping.length, 1);
    });
  });

  for (const setsid of [false, true]) {
    const where = setsid ? 'in a session of its own' : 'in its process group';
    it(`when the main process crashes, a worker left ${where} is drained, not left serving`, async () => {
      const env: Record<string, string> = { SD_MODE: 'worker' };
      if (setsid) env.SD_WORKER_SETSID = '1';
      await withWebAgent(['v1'], sdApp(env), async (ctx) => {
        const mainPid = (await webStatus(ctx.agent.socket)).generation!.pid;
        const workerPid = await workerOf(ctx);
        // The test's own agent started it: end it by its pid, as a crash would.
        process.kill(mainPid, 'SIGKILL');
        await ctx.agent.waitFor(
          (r) => r.type === 'phase' && r.phase === 'crashed' && r.generation === 1,
          'the crash',
        );
        await drainedOnSignal(ctx, workerPid);
        await ctx.agent.waitFor(
          (r) => r.type === 'phase' && r.phase === 'switched' && r.generation === 2,
          'the restarted generation',
        );
        // Only the new generation answers now.
        for (let i = 0; i < 20; i++) assert.match((await get(ctx.port)).body, /^sd v1 2 /);
      });
    });
  }

  it('a deploy drains a worker of the old generation that is in a session of its own, and lets it finish after its main process is gone', async () => {
    await withWebAgent(
      ['v1', 'v2'],
      sdApp({ SD_MODE: 'worker', SD_WORKER_SETSID: '1', SD_WORKER_LINGER: '1.5' }),
      async (ctx) => {
        const workerPid = await workerOf(ctx);
        await writeFile(path.join(ctx.dirs.v2!, 'baton.yml'), 'env: {SD_MODE: normal}\n');
        await control(ctx.agent.socket, { method: 'deploy', app: 'web', releaseDir: ctx.dirs.v2! });
        await drainedOnSignal(ctx, workerPid);
        for (let i = 0; i < 20; i++) assert.match((await get(ctx.port)).body, /^sd v2 2 /);
      },
    );
  });

  it('a missed watchdog restarts the generation like a crash, with no refused connection', async () => {
    await withWebAgent(['v1'], sdApp({}, { watchdogMs: 1500 }), async (ctx) => {
      const traffic = startLoad(ctx.port, { workers: 4, keepAlive: false, maxRequests: 50_000 });
      await get(ctx.port, '/stop-watchdog');
      await ctx.agent.waitFor(
        (r) => r.type === 'phase' && r.phase === 'crashed' && r.generation === 1,
        'generation 1 to be ended by the watchdog',
      );
      await ctx.agent.waitFor(
        (r) => r.type === 'phase' && r.phase === 'switched' && r.generation === 2,
        'generation 2 to take over',
      );
      // Serve a while on generation 2, still pinging.
      await waitUntil(
        async () => (await get(ctx.port)).body.startsWith('sd v1 2 '),
        'generation 2',
      );
      const result = await traffic.stop();
      const crashed = ctx.agent.events.find((e) => e.type === 'phase' && e.phase === 'crashed');
      assert.match(crashed?.type === 'phase' ? (crashed.detail ?? '') : '', /watchdog/);
      assert.deepEqual(result.errors, {}, 'no request failed, none refused');
      assert.equal(result.non2xx, 0);
      assert.ok(result.ok > 0);
    });
  });

  it('ignores a MAINPID= naming a process outside the generation', async () => {
    await withWebAgent(
      ['v1'],
      sdApp({ SD_MODE: 'mainpid', SD_FOREIGN_PID: String(process.pid) }),
      async (ctx) => {
        const status = await webStatus(ctx.agent.socket);
        assert.notEqual(status.generation!.pid, process.pid);
        assert.ok(
          ctx.agent.events.some(
            (e) =>
              e.type === 'log' &&
              e.line === `MAINPID=${process.pid} ignored: not a process of this generation`,
          ),
        );
        assert.match((await get(ctx.port)).body, /^sd v1 1 /);
      },
    );
  });

  it('a message from another user cannot reach the socket, and one sent after the generation is gone changes nothing', async () => {
    await withWebAgent(['v1', 'v2'], sdApp(), async (ctx) => {
      await writeFile(
        path.join(ctx.dirs.v2!, 'baton.yml'),
        'readiness: {type: systemd, timeoutMs: 8000}\nenv: {SD_READY_DELAY: "30"}\n',
      );
      const deploying = controlError(ctx.agent.socket, {
        method: 'deploy',
        app: 'web',
        releaseDir: ctx.dirs.v2!,
      });
      const started = await ctx.agent.waitFor(
        (r) => r.type === 'phase' && r.phase === 'generation-started' && r.generation === 2,
        'generation 2 to start',
      );
      // Read once the exec is done: a process mid-exec shows an empty environment.
      let socket = '';
      await waitUntil(async () => {
        const environ = await readFile(`/proc/${started.pid as number}/environ`, 'utf8');
        socket = /(?:^|\0)NOTIFY_SOCKET=([^\0]+)/.exec(environ)?.[1] ?? '';
        return socket !== '';
      }, 'the NOTIFY_SOCKET of generation 2');
      // Another user (uid 4242, no account) tries to say READY=1 for generation 2.
      const send = `import socket; s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.sendto(b"READY=1", ${JSON.stringify(socket)})`;
      const foreign = await run('setpriv', [
        '--reuid=4242',
        '--regid=4242',
        '--clear-groups',
        'python3',
        '-c',
        send,
      ]).then(
        () => 'sent',
        (err: { stderr?: string }) => err.stderr ?? 'failed',
      );
      assert.match(foreign, /PermissionError|Permission denied/);
      const err = await withDeadline(deploying, 'the deploy to fail');
      assert.equal(err.code, 'READINESS_TIMEOUT', 'READY=1 from another process did not count');
      assert.match((await get(ctx.port)).body, /^sd v1 1 /);
      // Generation 2 is gone; its socket with it.
      const late = await run('python3', ['-c', send]).then(
        () => 'sent',
        () => 'refused',
      );
      assert.equal(late, 'refused');
      assert.match((await get(ctx.port)).body, /^sd v1 1 /);
    });
  });
});
