import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import http from 'node:http';
import path from 'node:path';
import { describe, it } from 'node:test';
import { control } from '../../support/control.js';
import { withDeadline } from '../../support/deadline.js';
import { freePort } from '../../support/free-port.js';
import { get } from '../../support/http-get.js';
import { FIXTURES } from '../../support/paths.js';
import { withWebAgent } from '../support/web-agent.js';

describe('app helper (baton/app)', () => {
  it('drain lets a long request finish and closes an idle keep-alive connection cleanly', () =>
    withWebAgent(
      ['v1', 'v2'],
      { env: { FIXTURE_SLOW_MS: '1500', FIXTURE_IDLE_GRACE_MS: '200' } },
      async ({ agent, port, dirs }) => {
        // An idle keep-alive connection, left open after one request.
        const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 1 });
        assert.match((await get(port, '/', keepAlive)).body, /^v1 /);
        const idleSocket = Object.values(keepAlive.freeSockets)[0]![0]!;
        const idleEnded = new Promise<string>((resolve) => {
          idleSocket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
          idleSocket.once('close', () => resolve('closed'));
        });
        // A slow request in flight when the drain starts.
        const slow = get(port, '/slow');
        await agent.waitFor(
          (r) => r.type === 'log' && String(r.line).startsWith('serving v1'),
          'v1 serving',
        );
        await control(agent.socket, { method: 'deploy', app: 'web', releaseDir: dirs.v2! });
        const answered = await withDeadline(slow, 'slow request');
        assert.equal(answered.status, 200);
        assert.match(answered.body, /^v1 /, 'the old generation finished what it had');
        assert.equal(await withDeadline(idleEnded, 'idle socket close'), 'closed');
        assert.match((await get(port)).body, /^v2 /);
        keepAlive.destroy();
      },
    ));

  it('falls back to an ordinary listen() when not run by an agent', async () => {
    const port = await freePort();
    const child = spawn(process.execPath, [path.join(FIXTURES, 'app.mjs')], {
      env: {
        ...process.env,
        PORT: String(port),
        LISTEN_FDS: undefined,
        BATON_NOTIFY_FD: undefined,
      },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    try {
      await withDeadline(
        new Promise<void>((resolve) => child.stdout.once('data', () => resolve())),
        'app to listen',
      );
      assert.match((await get(port)).body, /^dev 0 /);
    } finally {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    }
  });
});
