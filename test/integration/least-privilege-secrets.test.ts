// A secret from the env file reaches the app and shows nowhere else, across deploys, upgrades and rotations.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { controlRequest } from '../../src/cli/control-client.js';
import type { SupervisorEvent } from '../../src/protocol/events.js';
import { isAlive } from '../../src/supervisor/process-util.js';
import { releases, writeConfig } from '../../support/agent-config.js';
import { batonAsync, batonSync } from '../../support/baton-cli.js';
import { control } from '../../support/control.js';
import { waitUntil, withDeadline } from '../../support/deadline.js';
import { get } from '../../support/http-get.js';
import { errorCodeOf, outcomeOf } from '../support/cli-output.js';
import { gatedHook } from '../support/gates.js';
import {
  passableTempDir,
  probeApp,
  writePrivate,
  startProbe,
  filesUnder,
  filesContaining,
  refusedRun,
} from '../support/privilege-probe.js';
import { waitGone } from '../support/processes.js';

describe('a secret from the env file shows nowhere but in the app', () => {
  it('a secret from the env file reaches the app, and its value shows nowhere else: events, agent output, status, errors, artifacts', async () => {
    const secret = `s3cr3t-${randomBytes(12).toString('hex')}`;
    const sha = createHash('sha256').update(secret).digest('hex');
    const probe = await startProbe(
      {
        envFile: './web.env',
        secretEnv: ['DB_PASSWORD'],
        env: { DB_PASSWORD_SHA256: sha, PROBE_PRINT_SECRET: '1' },
        hooks: { beforeRestart: 'echo "hook sees $DB_PASSWORD"' },
      },
      {
        channel: true,
        prepare: (dir) => writePrivate(path.join(dir, 'web.env'), `DB_PASSWORD=${secret}\n`),
      },
    );
    try {
      assert.equal((await get(probe.port, '/secret')).body, 'match\n');

      // A good deploy through the channel: the hook echoes the secret, the app prints it.
      const good = await batonAsync([
        'deploy',
        await probe.source('v1'),
        '--app',
        'web',
        '--key',
        probe.keyFile,
        '--release-id',
        'v1',
        '--json',
        ...probe.direct,
      ]).done;
      assert.equal(good.code, 0, good.stderr);
      assert.equal(outcomeOf(good.stdout).ok, true);
      assert.match(good.stdout, /hook sees \*\*\*/);
      assert.equal((await get(probe.port, '/secret')).body, 'match\n');

      // A release whose generation prints the secret and exits before it is ready.
      const bad = await batonAsync([
        'deploy',
        await probe.source('v2', { mode: 'fail-printing-secret\n' }),
        '--app',
        'web',
        '--key',
        probe.keyFile,
        '--release-id',
        'v2',
        '--json',
        ...probe.direct,
      ]).done;
      assert.notEqual(bad.code, 0);
      const outcome = outcomeOf(bad.stdout);
      assert.equal(outcome.ok, false);
      assert.equal(outcome.error?.code, 'GENERATION_EXITED');
      assert.match(bad.stdout + bad.stderr, /DB_PASSWORD=\*\*\*|password \*\*\*/);

      // The same through the control socket, from a plain directory.
      const [v3] = await releases(probe.dir, 'v3');
      await writeFile(path.join(v3!, 'mode'), 'fail-printing-secret\n');
      const controlEvents: SupervisorEvent[] = [];
      const err = await withDeadline(
        controlRequest(probe.agent.socket, { method: 'deploy', app: 'web', releaseDir: v3! }, (e) =>
          controlEvents.push(e),
        ).then(
          () => assert.fail('the failing release was deployed'),
          (e: unknown) => e as { code: string; message: string; lines: readonly string[] },
        ),
        'the control deploy to fail',
      );
      assert.equal(err.code, 'GENERATION_EXITED');
      assert.ok(controlEvents.some((e) => e.type === 'log' && e.line === 'hook sees ***'));
      assert.ok(
        err.lines.some((l) => l.includes('***')),
        `the error's lines show *** for it:\n${err.lines.join('\n')}`,
      );
      const asked = await get(probe.port, '/print-secret');
      assert.equal(asked.status, 200);
      await probe.agent.waitFor(
        (r) => r.type === 'log' && String(r.line).startsWith('asked to print'),
        'the app to print the secret on request',
      );

      const status = batonSync(['agent', 'status', '--config', probe.configFile]);
      const statusJson = batonSync(['agent', 'status', '--json', '--config', probe.configFile]);
      const listed = batonSync(['releases', '--app', 'web', '--json', ...probe.direct]);
      assert.equal(status.status, 0, status.stderr);
      assert.equal(statusJson.status, 0, statusJson.stderr);
      assert.equal(listed.status, 0, listed.stderr);

      const seen: Record<string, string> = {
        'channel deploy (good)': good.stdout + good.stderr,
        'channel deploy (failing)': bad.stdout + bad.stderr,
        'control error': [err.message, ...err.lines].join('\n'),
        'control events': JSON.stringify(controlEvents),
        'agent status': status.stdout + status.stderr,
        'agent status --json': statusJson.stdout + statusJson.stderr,
        'releases --json': listed.stdout + listed.stderr,
        'agent stdout and stderr': probe.agent.output.join('\n'),
      };
      for (const [where, text] of Object.entries(seen))
        assert.ok(!text.includes(secret), `the secret shows in ${where}:\n${text}`);
      assert.match(probe.agent.output.join('\n'), /asked to print DB_PASSWORD=\*\*\*/);
      assert.match(probe.agent.output.join('\n'), /hook sees \*\*\*/);

      // Nor on disk, where the agent writes (the generations' own output files aside: those are
      // what the app itself printed): state, audit, store records, artifacts, releases.
      const scanned = await filesUnder(probe.stateDir);
      assert.ok(
        scanned.some((f) => f.endsWith('.tar.gz')) && scanned.some((f) => f.endsWith('/VERSION')),
      );
      const leaks = await filesContaining(probe.stateDir, secret, /\/logs\/web\.gen-\d+\.log$/);
      assert.deepEqual(leaks, []);
      const sources = await filesContaining(path.join(probe.dir, 'src'), secret, /^$/);
      assert.deepEqual(sources, []);
    } finally {
      await probe.cleanup();
    }
  });
});

describe('secret masking beyond a single deploy', () => {
  const secretEnvFile = (secret: string) => (dir: string) =>
    writePrivate(path.join(dir, 'web.env'), `DB_PASSWORD=${secret}\n`);
  const secretApp = { envFile: './web.env', secretEnv: ['DB_PASSWORD'] };

  it(
    'a first generation that fails at agent start, printing the secret: the agent exits saying *** instead',
    {},
    async () => {
      const secret = `s3cr3t-${randomBytes(12).toString('hex')}`;
      const tmp = await passableTempDir();
      try {
        const [r0] = await releases(tmp.dir, 'r0');
        await writeFile(path.join(r0!, 'mode'), 'fail-printing-secret\n');
        await secretEnvFile(secret)(tmp.dir);
        const configFile = await writeConfig(tmp.dir, {
          stateDir: './state',
          apps: [probeApp({ release: r0, ...secretApp })],
        });
        const { code, stderr } = await refusedRun(configFile);
        assert.notEqual(code, 0);
        assert.equal(errorCodeOf(stderr), 'GENERATION_EXITED', stderr);
        assert.ok(!stderr.includes(secret), `the secret shows in the agent's error:\n${stderr}`);
        assert.match(stderr, /\*\*\*/);
      } finally {
        await tmp.cleanup();
      }
    },
  );

  it('after an agent upgrade, what the adopted generation prints is still masked', async () => {
    const secret = `s3cr3t-${randomBytes(12).toString('hex')}`;
    const probe = await startProbe(secretApp, { prepare: secretEnvFile(secret) });
    let successor: number | undefined;
    try {
      const { result } = await control(probe.agent.socket, { method: 'upgrade' });
      successor = (result as { pid: number }).pid;
      await withDeadline(probe.agent.exited, 'the old agent to exit');
      assert.equal((await get(probe.port, '/print-secret')).status, 200);
      // The new agent's output goes to <stateDir>/agent.log.
      const agentLog = path.join(probe.stateDir, 'agent.log');
      await waitUntil(
        async () => (await readFile(agentLog, 'utf8')).includes('asked to print'),
        'the adopted generation to print, through the new agent',
      );
      const text = await readFile(agentLog, 'utf8');
      assert.ok(!text.includes(secret), `the secret shows in the new agent's log:\n${text}`);
    } finally {
      if (successor !== undefined && isAlive(successor)) {
        process.kill(successor, 'SIGTERM');
        await waitGone(successor);
      }
      await probe.cleanup();
    }
  });

  it('a rotated secret: what the old generation prints of the old value, while the deploy runs, is still masked', async () => {
    const oldSecret = `old-${randomBytes(12).toString('hex')}`;
    const newSecret = `new-${randomBytes(12).toString('hex')}`;
    const tmpGate = await passableTempDir();
    const gate = gatedHook(tmpGate.dir, 'gate');
    const probe = await startProbe(
      { ...secretApp, hooks: { beforeRestart: gate.hook } },
      { prepare: secretEnvFile(oldSecret) },
    );
    try {
      const [v2] = await releases(probe.dir, 'v2');
      await secretEnvFile(newSecret)(probe.dir);
      const deploying = control(probe.agent.socket, {
        method: 'deploy',
        app: 'web',
        releaseDir: v2!,
      });
      await probe.agent.waitFor(
        (r) => r.type === 'phase' && r.phase === 'hook-started' && r.hook === 'beforeRestart',
        'the deploy to reach its hook',
      );
      // Generation 1, started with the old value, still serves: it prints it now.
      assert.equal((await get(probe.port, '/print-secret')).status, 200);
      const line = await probe.agent.waitFor(
        (r) => r.type === 'log' && r.source === 'gen-1' && String(r.line).startsWith('asked'),
        'generation 1 to print',
      );
      await gate.open();
      await deploying;
      assert.ok(!String(line.line).includes(oldSecret), `unmasked: ${String(line.line)}`);
      assert.ok(!probe.agent.output.join('\n').includes(oldSecret));
    } finally {
      await probe.cleanup();
      await tmpGate.cleanup();
    }
  });
});
