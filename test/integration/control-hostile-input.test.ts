import assert from 'node:assert/strict';
import { stat } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { releases, webApp, writeConfig } from '../../support/agent-config.js';
import { type RunningAgent, startAgent } from '../../support/agent-process.js';
import { control, listenerPort } from '../../support/control.js';
import { withDeadline } from '../../support/deadline.js';
import { get } from '../../support/http-get.js';
import { tempDir } from '../../support/temp-dir.js';

/** Sends raw bytes on the control socket and collects what comes back until the agent closes or `lines` arrive. */
function raw(socket: string, payload: string | Buffer, lines = 1): Promise<string[]> {
  return withDeadline(
    new Promise<string[]>((resolve, reject) => {
      const c = net.connect(socket);
      let data = '';
      const done = () => {
        c.destroy();
        resolve(data.split('\n').filter(Boolean));
      };
      c.on('connect', () => c.write(payload));
      c.setEncoding('utf8').on('data', (d: string) => {
        data += d;
        if (data.split('\n').filter(Boolean).length >= lines) done();
      });
      c.on('close', done);
      c.on('error', (err: NodeJS.ErrnoException) =>
        err.code === 'EPIPE' || err.code === 'ECONNRESET' ? done() : reject(err),
      );
    }),
    'control answer',
  );
}

describe('control socket under hostile input', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>;
  let agent: RunningAgent;
  let port: number;

  before(async () => {
    tmp = await tempDir();
    const [v1] = await releases(tmp.dir, 'v1');
    agent = await startAgent(
      await writeConfig(tmp.dir, { stateDir: './state', apps: [webApp({ release: v1 })] }),
    );
    port = listenerPort((await control(agent.socket, { method: 'status' })).result);
  });
  after(async () => {
    await agent?.stop();
    await tmp?.cleanup();
  });

  const attacks: [string, string | Buffer, RegExp][] = [
    ['not JSON', 'hello agent\n', /not JSON/],
    [
      'binary garbage',
      Buffer.concat([Buffer.from([0, 1, 2, 255, 254]), Buffer.from('\n')]),
      /not JSON/,
    ],
    ['unknown method', '{"id":"1","method":"rm-rf"}\n', /bad request/],
    [
      'unknown field (strict schema)',
      '{"id":"1","method":"status","sudo":true}\n',
      /unknown field/,
    ],
    ['wrong types', '{"id":1,"method":"deploy","app":["web"],"releaseDir":7}\n', /bad request/],
    [
      'relative release path',
      '{"id":"1","method":"deploy","app":"web","releaseDir":"../../etc"}\n',
      /absolute path/,
    ],
    [
      'deploy to an unknown app',
      '{"id":"1","method":"deploy","app":"nope","releaseDir":"/tmp"}\n',
      /no app "nope"/,
    ],
    ['JSON that is not an object', '[1,2,3]\n', /bad request/],
  ];
  for (const [name, payload, expected] of attacks) {
    it(`answers ${name} with an error line`, async () => {
      const [line] = await raw(agent.socket, payload);
      const msg = JSON.parse(line!) as { type: string; message: string };
      assert.equal(msg.type, 'error');
      assert.match(msg.message, expected);
    });
  }

  it('cuts off a line longer than the limit', async () => {
    const lines = await raw(agent.socket, 'x'.repeat(200 * 1024));
    assert.match(lines[0] ?? '', /longer than/);
  });

  it('keeps serving the app and good clients after all of that', async () => {
    assert.match((await get(port)).body, /^v1 1 /);
    const { result } = await control(agent.socket, { method: 'status' });
    assert.equal((result as { apps: { state: string }[] }).apps[0]!.state, 'running');
  });

  it('is reachable only by its owner', async () => {
    const info = await stat(agent.socket);
    assert.equal(info.mode & 0o077, 0, 'socket mode');
    // Others may pass through the state dir (an app's user reaches its releases and notify
    // socket) but not list it or write in it.
    assert.equal((await stat(path.dirname(agent.socket))).mode & 0o077, 0o011, 'state dir mode');
  });
});
