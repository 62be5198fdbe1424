import assert from 'node:assert/strict';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { releases, webApp, writeConfig } from '../../support/agent-config.js';
import { type RunningAgent, startAgent } from '../../support/agent-process.js';
import { control } from '../../support/control.js';
import { FIXTURES } from '../../support/paths.js';
import { tempDir } from '../../support/temp-dir.js';

const WRITER = ['node', path.join(FIXTURES, 'log-writer.mjs')];
/** 14 characters none of the fixture's own output contains. */
const SECRET = 'Qz7kP2mW9vRj4T';

/** The log lines the agent emitted for `web`, from its JSON-lines output. */
function appLines(agent: RunningAgent, source?: string): string[] {
  return agent.events
    .filter((e) => e.type === 'log' && (source === undefined || e.source === source))
    .map((e) => String((e as { line: unknown }).line));
}

/** Every run of 4 characters of the secret that shows anywhere in `lines`. */
function secretPieces(lines: string[]): string[] {
  const found = new Set<string>();
  for (let i = 0; i + 4 <= SECRET.length; i++) {
    const piece = SECRET.slice(i, i + 4);
    if (lines.some((l) => l.includes(piece))) found.add(piece);
  }
  return [...found];
}

async function withWriter(
  app: Record<string, unknown>,
  body: (agent: RunningAgent, ctx: { dir: string; dirs: string[] }) => Promise<void>,
  agentEnv: NodeJS.ProcessEnv = {},
): Promise<void> {
  const tmp = await tempDir();
  const dirs = await releases(tmp.dir, 'v1', 'v2');
  const config = await writeConfig(tmp.dir, {
    stateDir: './state',
    apps: [webApp({ command: WRITER, release: dirs[0], ...app })],
  });
  const agent = await startAgent(config, { env: agentEnv });
  try {
    await body(agent, { dir: tmp.dir, dirs });
  } finally {
    await agent.stop();
    await tmp.cleanup();
  }
}

describe('the generation log', () => {
  it('stays bounded and free of NUL bytes once the app has written more than maxLogBytes', () =>
    withWriter(
      { maxLogBytes: 100_000, env: { LOG_BURST_BYTES: '120000', LOG_TICKS: '40' } },
      async (agent, { dir }) => {
        await agent.waitFor((r) => r.type === 'log' && r.line === 'ticks done', 'the last tick');
        const lines = appLines(agent, 'gen-1');
        assert.equal(
          lines.filter((l) => l.includes('\u0000')).length,
          0,
          'no line of NUL bytes is emitted',
        );
        const ticks = lines.filter((l) => /^tick \d+$/.test(l));
        assert.deepEqual(
          ticks,
          Array.from({ length: 40 }, (_, i) => `tick ${i + 1}`),
          'every tick once, in order',
        );
        // 120 burst lines, the ticks, 'ticks done' and the helper's own lines, if any: nothing
        // read twice.
        assert.ok(lines.length < 120 + 40 + 10, `${lines.length} lines emitted`);
        const file = path.join(dir, 'state', 'logs', 'web.gen-1.log');
        const { size } = await stat(file);
        assert.ok(size < 100_000, `the file was cut back and stays small (${size} bytes)`);
        assert.equal((await readFile(file)).includes(0), false, 'no hole in the file');
      },
    ));
});

describe('secret masking at the line clip', () => {
  it('masks a secret that straddles the 8 KiB clip of a long line', () =>
    withWriter(
      {
        env: {
          DB_PASSWORD: SECRET,
          LOG_PIECES: JSON.stringify([`${'x'.repeat(8192 - 13)}${SECRET}tail\n`, 'short\n']),
        },
        secretEnv: ['DB_PASSWORD'],
      },
      async (agent) => {
        await agent.waitFor((r) => r.type === 'log' && r.line === 'short', 'the short line');
        const lines = appLines(agent, 'gen-1');
        assert.ok(
          lines.some((l) => l.startsWith('xxxx') && l.includes('***')),
          'the long line is there, masked',
        );
        assert.deepEqual(secretPieces(lines), []);
      },
    ));

  it('masks a secret cut in two by the flush of a long line that has no end yet', () =>
    withWriter(
      {
        env: {
          DB_PASSWORD: SECRET,
          // The first piece passes 8 KiB and the secret's length, ending in its first 7 characters; the rest
          // comes 300 ms later, so the tail flushes what it has in between.
          LOG_PIECES: JSON.stringify([
            `${'y'.repeat(8210)}${SECRET.slice(0, 7)}`,
            `${SECRET.slice(7)} end\n`,
            'short\n',
          ]),
        },
        secretEnv: ['DB_PASSWORD'],
      },
      async (agent) => {
        await agent.waitFor((r) => r.type === 'log' && r.line === 'short', 'the short line');
        const lines = appLines(agent, 'gen-1');
        assert.ok(
          lines.some((l) => l.endsWith('*** end')),
          `the secret is masked where the line ends: ${lines.map((l) => l.slice(-20)).join(' | ')}`,
        );
        assert.deepEqual(secretPieces(lines), []);
        assert.equal(
          lines.filter((l) => /^y+/.test(l)).reduce((n, l) => n + /^y+/.exec(l)![0].length, 0),
          8210,
          'nothing of the line is lost in the cut',
        );
      },
    ));
});

describe("the agent's environment", () => {
  /** Names of the variables the app (gen-1) and the beforeRestart hook saw. */
  async function seenEnv(
    app: Record<string, unknown>,
    agentEnv: NodeJS.ProcessEnv,
  ): Promise<{ app: string[]; hook: string[] }> {
    let seen = { app: [] as string[], hook: [] as string[] };
    await withWriter(
      {
        ...app,
        env: { LOG_ENV: '1', FROM_CONFIG: 'yes' },
        hooks: { beforeRestart: 'env | sed "s/=.*//; s/^/hook-env /"' },
      },
      async (agent, { dirs }) => {
        await agent.waitFor((r) => r.type === 'log' && r.line === 'ticks done', 'v1 serving');
        await control(agent.socket, { method: 'deploy', app: 'web', releaseDir: dirs[1]! });
        seen = {
          app: appLines(agent, 'gen-1')
            .filter((l) => l.startsWith('env '))
            .map((l) => l.slice(4)),
          hook: appLines(agent, 'hook:beforeRestart')
            .filter((l) => l.startsWith('hook-env '))
            .map((l) => l.slice(9)),
        };
      },
      agentEnv,
    );
    return seen;
  }

  it('reaches neither the app nor its hooks: they start from PATH, the locale and what baton and the config set', async () => {
    const seen = await seenEnv(
      {},
      { AWS_SECRET_ACCESS_KEY: 'root-only-secret', AGENT_ONLY: '1', LANG: 'C.UTF-8' },
    );
    for (const [who, names] of Object.entries(seen)) {
      assert.equal(names.includes('AWS_SECRET_ACCESS_KEY'), false, `${who}: ${names.join(' ')}`);
      assert.equal(names.includes('AGENT_ONLY'), false, who);
      for (const name of ['PATH', 'LANG', 'HOME', 'BATON_APP', 'BATON_RELEASE_ID', 'FROM_CONFIG'])
        assert.ok(names.includes(name), `${who} has ${name}: ${names.join(' ')}`);
    }
    assert.ok(seen.app.includes('LISTEN_FDS'), 'the app has its sockets');
  });

  it('passes on what passEnv names, and only that', async () => {
    const seen = await seenEnv(
      { passEnv: ['PASSED_ON'] },
      { PASSED_ON: 'kept', NOT_PASSED: 'dropped' },
    );
    for (const [who, names] of Object.entries(seen)) {
      assert.ok(names.includes('PASSED_ON'), `${who}: ${names.join(' ')}`);
      assert.equal(names.includes('NOT_PASSED'), false, who);
    }
  });
});
