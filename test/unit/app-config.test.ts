import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  AppDeployConfigSchema,
  parseAppDeployConfig,
  readAppDeployConfig,
} from '../../src/artifact/app-config.js';
import { rejectsWith } from '../support/artifact-support.js';
import { tempDir } from '../../support/temp-dir.js';

const FULL = `
command: [node, server.js, --port-from-fd]
readiness:
  type: http
  path: /ready
  timeoutMs: 20000
drain:
  signal: SIGINT
  timeoutMs: 5000
hooks:
  beforeRestart: npm run migrate
  afterRestart:
    run: ./notify.sh
    timeoutMs: 1000
env:
  NODE_ENV: production
listeners:
  - name: http
    tcp: 127.0.0.1:8080
`;

describe('baton.yml', () => {
  let tmp: { dir: string; cleanup: () => Promise<void> };
  let n = 0;
  /** A directory holding `text` as its baton.yml. */
  const withConfig = async (text: string): Promise<string> => {
    const dir = path.join(tmp.dir, `app-${n++}`);
    await mkdir(dir);
    await writeFile(path.join(dir, 'baton.yml'), text);
    return dir;
  };
  before(async () => (tmp = await tempDir('baton-app-config-')));
  after(() => tmp.cleanup());

  it('reads a valid config, with the agent schema shapes', async () => {
    const config = await readAppDeployConfig(await withConfig(FULL));
    assert.deepEqual(config, {
      command: ['node', 'server.js', '--port-from-fd'],
      readiness: { type: 'http', path: '/ready', intervalMs: 100, timeoutMs: 20000 },
      drain: { signal: 'SIGINT', timeoutMs: 5000 },
      hooks: {
        beforeRestart: { run: 'npm run migrate', timeoutMs: 60_000 },
        afterRestart: { run: './notify.sh', timeoutMs: 1000 },
      },
      env: { NODE_ENV: 'production' },
      listeners: [
        { name: 'http', tcp: { host: '127.0.0.1', port: 8080, family: 4 }, backlog: 511 },
      ],
    });
  });

  it('leaves out what it does not set: the agent config keeps those', async () => {
    assert.deepEqual(await readAppDeployConfig(await withConfig('command: [./app]\n')), {
      command: ['./app'],
    });
    assert.deepEqual(await readAppDeployConfig(await withConfig('')), {});
  });

  it('is optional', async () => {
    const dir = path.join(tmp.dir, 'none');
    await mkdir(dir);
    assert.equal(await readAppDeployConfig(dir), undefined);
  });

  it('names the path of an unknown field', async () => {
    for (const [text, where] of [
      ['comand: [node]\n', '(top level)'],
      ['drain:\n  timeout: 5000\n', 'drain'],
      ['hooks:\n  beforeRestart:\n    run: x\n    timeout: 1\n', 'hooks.beforeRestart'],
      ['name: web\n', '(top level)'],
    ] as const) {
      const err = await rejectsWith(
        async () => readAppDeployConfig(await withConfig(text)),
        'APP_CONFIG_INVALID',
      );
      assert.ok(err.message.includes(`${where}: unknown field`), err.message);
      assert.ok(err.message.includes('baton.yml'), err.message);
    }
  });

  it('refuses a readiness of the wrong type', async () => {
    for (const text of [
      'readiness: { type: magic }\n',
      'readiness: http\n',
      'readiness: { type: http, timeoutMs: soon }\n',
      'readiness: { type: delay, ms: -1 }\n',
    ]) {
      const err = await rejectsWith(
        async () => readAppDeployConfig(await withConfig(text)),
        'APP_CONFIG_INVALID',
      );
      assert.ok(err.message.includes('readiness'), err.message);
    }
  });

  it('refuses other bad values and bad YAML', () => {
    for (const text of [
      'command: node server.js\n',
      'command: []\n',
      'env: { PORT: 8080 }\n',
      'drain: { signal: SIGSTOP }\n',
      'listeners: [{ name: http }]\n',
      'listeners: [{ name: a, tcp: "1" }, { name: a, tcp: "2" }]\n',
      'command: [node\n',
      '- just\n- a list\n',
      'a: 1\na: 2\n',
    ])
      assert.throws(() => parseAppDeployConfig(text, 'baton.yml'), { code: 'APP_CONFIG_INVALID' });
  });

  it('is strict at every level', () => {
    assert.equal(AppDeployConfigSchema.safeParse({ extra: true }).success, false);
    assert.equal(AppDeployConfigSchema.safeParse({}).success, true);
  });
});
