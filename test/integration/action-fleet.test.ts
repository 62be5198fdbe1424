import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { batonAsync, batonSync } from '../../support/baton-cli.js';
import { startChannelAgent, type ChannelAgent } from '../../support/channel-agent.js';
import { failures, startLoad, type LoadResult } from '../../support/load-client.js';
import { startSshd, type TestSshd } from '../../support/sshd.js';
import { tempDir } from '../../support/temp-dir.js';
import { gatedHook } from '../support/gates.js';
import {
  actionYml,
  RUNNER_NODE,
  runAction,
  startFakeGitHub,
  type ActionRun,
} from '../support/run-action.js';

/**
 * The bundled action (dist/action.mjs), run as the runner runs it, against three real agents
 * behind a real OpenSSH server on loopback, with load on every host through every run: not one
 * request may fail, whatever the run does.
 */
describe('the action deploys a fleet of three hosts through OpenSSH', () => {
  let sshd: TestSshd;
  let work: { dir: string; cleanup(): Promise<void> };
  let hosts: ChannelAgent[];
  let signingKey: string;
  let hostLines: string[];

  before(async () => {
    // Under CI the action runs on the runners' Node, as it will for users.
    if (process.env.CI)
      assert.notEqual(
        RUNNER_NODE,
        process.execPath,
        'Node 24 is not in .tools/ (npm ci puts it there: scripts/runner-node.mjs)',
      );
    // The agents run on this machine's Node; the action on the runners' where it is installed.
    if (RUNNER_NODE !== process.execPath)
      assert.match(execFileSync(RUNNER_NODE, ['--version'], { encoding: 'utf8' }), /^v24\./);
    sshd = await startSshd();
    work = await tempDir('baton-action-');
    const keys = path.join(work.dir, 'keys');
    const r = batonSync(['keygen', '--out', keys]);
    assert.equal(r.status, 0, r.stderr);
    signingKey = await readFile(path.join(keys, 'baton.key'), 'utf8');
    const tokenFile = path.join(work.dir, 'token');
    const t = batonSync(['agent', 'token', '--out', tokenFile]);
    assert.equal(t.status, 0, t.stderr);
    // Host 2 tells its apps apart (HOST_TAG): a release can then fail on it alone.
    hosts = [];
    for (const tag of ['h1', 'h2', 'h3'])
      hosts.push(
        await startChannelAgent(
          { port: undefined },
          { env: { HOST_TAG: tag }, readiness: { type: 'notify', timeoutMs: 4000 } },
          {},
          { keys, tokenFile },
        ),
      );
    hostLines = hosts.map((h) => `${sshd.target} agent-socket=${h.channelSocket}`);
  });

  after(async () => {
    for (const h of hosts ?? []) await h.cleanup();
    await sshd?.stop();
    await work?.cleanup();
  });

  /** What every run needs: where, who, the token and the key. */
  function base(): Record<string, string> {
    return {
      hosts: hostLines.join('\n'),
      'ssh-key': sshd.clientKey.privateKey,
      'known-hosts': sshd.knownHostsLine,
      'agent-token': hosts[0]!.token,
      app: 'web',
      'signing-key': signingKey,
    };
  }

  /** Runs the action with load on every host; returns the run and each host's load. */
  async function underLoad(
    inputs: Record<string, string>,
    env: Record<string, string> = {},
    onStdout?: Parameters<typeof runAction>[3],
  ): Promise<{ run: ActionRun; load: LoadResult[] }> {
    const loads = hosts.map((h) =>
      startLoad(h.appPort, { workers: 2, keepAlive: true, timeoutMs: 15_000, maxRequests: 40_000 }),
    );
    const run = await runAction(work.dir, { ...base(), ...inputs }, env, onStdout);
    const load = await Promise.all(loads.map((l) => l.stop()));
    return { run, load };
  }

  const releasesNow = () => Promise.all(hosts.map(async (h) => (await h.generation()).releaseId));

  function assertNoDrops(load: LoadResult[], run: ActionRun): void {
    for (const [i, l] of load.entries()) {
      assert.ok(l.answered > 0, `host ${i + 1} answered nothing under load`);
      assert.equal(
        failures(l),
        0,
        `host ${i + 1} dropped requests: ${JSON.stringify(l.errors)}\n${run.stdout}`,
      );
    }
  }

  function assertNoSecrets(run: ActionRun): void {
    // `::add-mask::` lines tell the runner what to hide: the only place a secret may be.
    const log = run.stdout.replace(/^::add-mask::.*$/gm, '');
    const shown = [log, run.stderr, run.summary, JSON.stringify(run.outputs)].join('\n');
    assert.ok(!shown.includes(hosts[0]!.token), 'the agent token appears in the log');
    const keyLine = sshd.clientKey.privateKey.split('\n')[1]!;
    assert.ok(!shown.includes(keyLine), 'a line of the SSH key appears in the log');
    assert.ok(!shown.includes(signingKey.split('\n')[1]!), 'the signing key appears in the log');
  }

  it('deploys to every host under load, records a GitHub Deployment, writes outputs and a summary', async () => {
    const api = await startFakeGitHub();
    try {
      const src = await hosts[0]!.source('A');
      const { run, load } = await underLoad(
        {
          artifact: src,
          'release-id': 'A',
          environment: 'production',
          'environment-url': 'https://shop.example',
        },
        { GITHUB_API_URL: api.url },
      );
      assert.equal(run.code, 0, run.stdout + run.stderr);
      assertNoDrops(load, run);
      assert.deepEqual(await releasesNow(), ['A', 'A', 'A']);
      // The outputs the code sets are exactly those action.yml declares.
      assert.deepEqual(Object.keys(run.outputs).sort(), Object.keys(actionYml().outputs).sort());
      assert.equal(run.outputs.release, 'A');
      assert.equal(run.outputs['previous-release'], 'r0');
      assert.equal(run.outputs['hosts-succeeded']!.split(',').length, 3);
      assert.equal(run.outputs['hosts-failed'], '');
      const report = JSON.parse(run.outputs.report!) as {
        hosts: {
          result: string;
          before: string;
          after: string;
          bytesSent: number;
          phases: Record<string, number>;
        }[];
      };
      for (const h of report.hosts) {
        assert.equal(h.result, 'switched');
        assert.equal(h.before, 'r0');
        assert.equal(h.after, 'A');
        assert.ok(h.bytesSent > 0, 'each host received the artifact');
        assert.ok('received' in h.phases && 'switched' in h.phases, JSON.stringify(h.phases));
      }
      // Live lines prefixed with the host, each host's detail in a group.
      assert.match(run.stdout, /^\[[^\]]+\] web: switched/m);
      assert.match(run.stdout, /^::group::.*: switch done/m);
      assert.equal(run.summary.split('\n').filter((l) => l.includes('✅ switched')).length, 3);
      assert.match(run.summary, /Every host runs `A`/);
      // The deployment: created for the commit, then in_progress, then success.
      assert.deepEqual(
        api.calls.map((c) => `${c.method} ${c.path} ${String(c.body.state ?? c.body.environment)}`),
        [
          'POST /repos/acme/shop/deployments production',
          `POST /repos/acme/shop/deployments/1000/statuses in_progress`,
          `POST /repos/acme/shop/deployments/1000/statuses success`,
        ],
      );
      assert.equal(api.calls[0]!.body.ref, '0123456789abcdef0123456789abcdef01234567');
      assert.equal(api.calls[0]!.authorization, 'token ghs_faketoken0123456789');
      assert.match(
        String(api.calls[2]!.body.log_url),
        /^https:\/\/github\.example\/acme\/shop\/actions\/runs\/\d+\/attempts\/1$/,
      );
      assert.equal(api.calls[2]!.body.environment_url, 'https://shop.example');
      assertNoSecrets(run);
    } finally {
      await api.close();
    }
  });

  it('rolling: when host 2 never gets ready, the hosts already switched go back and host 3 is never touched', async () => {
    const src = await hosts[0]!.source('B', { mode: 'never-ready-on h2' });
    const { run, load } = await underLoad({
      artifact: src,
      'release-id': 'B',
      strategy: 'rolling',
      'batch-size': '1',
      'on-failure': 'rollback',
    });
    assert.equal(run.code, 1, run.stdout);
    assertNoDrops(load, run);
    assert.deepEqual(await releasesNow(), ['A', 'A', 'A']);
    const host2 = `${sshd.target}#${hosts[1]!.channelSocket}`;
    assert.equal(run.outputs['hosts-failed'], host2);
    assert.ok(
      run.errors.some((e) => e.title.includes(host2) && /READINESS_TIMEOUT/.test(e.message)),
      JSON.stringify(run.errors),
    );
    const report = JSON.parse(run.outputs.report!) as {
      hosts: { result: string; after: string }[];
    };
    assert.deepEqual(
      report.hosts.map((h) => h.result),
      ['rolled-back', 'failed', 'not-switched'],
    );
    assert.match(run.stdout, /::error::.*host.*failed|::error::.*failed/);
    assert.match(run.summary, /Rolled back:/);
    // Its readiness column shows the wait that gave up on it (the 4 s readiness timeout).
    const failedRow = run.summary.split('\n').find((l) => l.includes('❌ failed'))!;
    assert.match(failedRow, /\| 4\.\d s \|/, failedRow);
  });

  it('one host unreachable at preflight: the step fails and nothing changes on any host', async () => {
    const src = await hosts[0]!.source('C');
    const { run, load } = await underLoad({
      artifact: src,
      'release-id': 'C',
      hosts: [
        ...hostLines,
        `${sshd.target} agent-socket=${path.join(work.dir, 'no-agent.sock')}`,
      ].join('\n'),
    });
    assert.equal(run.code, 1, run.stdout);
    assertNoDrops(load, run);
    assert.deepEqual(await releasesNow(), ['A', 'A', 'A']);
    assert.match(run.stdout, /failed preflight; nothing was changed on any host/);
    assert.doesNotMatch(run.stdout, /stage: sending/);
  });

  it('a GitHub API that refuses is a warning: the deploy goes on', async () => {
    const api = await startFakeGitHub({ failWith: 403 });
    try {
      const src = await hosts[0]!.source('C');
      const { run, load } = await underLoad(
        { artifact: src, 'release-id': 'C', environment: 'production' },
        { GITHUB_API_URL: api.url },
      );
      assert.equal(run.code, 0, run.stdout);
      assertNoDrops(load, run);
      assert.deepEqual(await releasesNow(), ['C', 'C', 'C']);
      assert.ok(
        run.warnings.some((w) => w.includes('no GitHub Deployment recorded')),
        run.stdout,
      );
    } finally {
      await api.close();
    }
  });

  it('rollback: true puts every host back on the release they shared before, sending nothing', async () => {
    const { run, load } = await underLoad({ rollback: 'true' });
    assert.equal(run.code, 0, run.stdout);
    assertNoDrops(load, run);
    assert.deepEqual(await releasesNow(), ['A', 'A', 'A']);
    assert.equal(run.outputs.release, 'A');
    const report = JSON.parse(run.outputs.report!) as { hosts: { bytesSent: number }[] };
    assert.ok(report.hosts.every((h) => h.bytesSent === 0));
  });

  it('a manual redeploy of a release the hosts hold sends 0 artifact bytes', async () => {
    const { run, load } = await underLoad({ release: 'C' });
    assert.equal(run.code, 0, run.stdout);
    assertNoDrops(load, run);
    assert.deepEqual(await releasesNow(), ['C', 'C', 'C']);
    const report = JSON.parse(run.outputs.report!) as {
      hosts: { bytesSent: number; result: string }[];
    };
    assert.deepEqual(
      report.hosts.map((h) => [h.result, h.bytesSent]),
      [
        ['switched', 0],
        ['switched', 0],
        ['switched', 0],
      ],
    );
  });

  it('rollback where the hosts disagree on what ran before is refused before any change', async () => {
    // Host 1 alone goes back to A: it ran C before now, the others ran A.
    const one = await runAction(
      work.dir,
      { ...base(), hosts: hostLines[0]!, rollback: 'true' },
      {},
    );
    assert.equal(one.code, 0, one.stdout);
    const { run, load } = await underLoad({ rollback: 'true' });
    assert.equal(run.code, 1, run.stdout);
    assertNoDrops(load, run);
    assert.deepEqual(await releasesNow(), ['A', 'C', 'C']);
    assert.match(run.stdout, /do not share one previous release/);
    assert.match(run.stdout, /runs A, ran C before/);
    assert.match(run.stdout, /runs C, ran A before/);
  });

  it('SIGINT in the middle of a deploy: no further host is switched, none is left between versions, a re-run finishes', async () => {
    // One host at a time, each with a slow hook: the cancellation lands while hosts still wait.
    const src = await hosts[0]!.source('D', { hook: 'sleep 1' });
    const inputs = { artifact: src, 'release-id': 'D', 'max-parallel': '1' };
    let sent = false;
    const { run, load } = await underLoad(inputs, {}, (chunk, child) => {
      if (!sent && /: switch done/.test(chunk)) {
        sent = true;
        child.kill('SIGINT');
      }
    });
    assert.ok(sent, 'the run never switched a host');
    assert.notEqual(run.code, 0, run.stdout);
    assertNoDrops(load, run);
    // Each host runs one whole release: the one it ran before (the switched one rolled back).
    assert.deepEqual(await releasesNow(), ['A', 'C', 'C'], run.stdout);
    assert.match(run.stdout, /cancelled/);
    const switched = run.stdout.match(/: switch done/g)?.length ?? 0;
    assert.ok(switched < 3, `every host was switched after the cancellation:\n${run.stdout}`);
    // A re-run of the same workflow run (its next attempt) finishes the job.
    const again = await underLoad(inputs, { GITHUB_RUN_ID: run.runId, GITHUB_RUN_ATTEMPT: '2' });
    assert.equal(again.run.code, 0, again.run.stdout);
    assertNoDrops(again.load, again.run);
    assert.deepEqual(await releasesNow(), ['D', 'D', 'D']);
  });

  it('dry run: reaches every host, says what it would send and switch, changes nothing', async () => {
    const src = await hosts[0]!.source('G');
    const { run, load } = await underLoad({ artifact: src, 'release-id': 'G', 'dry-run': 'true' });
    assert.equal(run.code, 0, run.stdout);
    assertNoDrops(load, run);
    assert.deepEqual(await releasesNow(), ['D', 'D', 'D']);
    assert.equal(
      run.stdout.match(/dry run: would send \d+ bytes, then switch from D to G/g)?.length,
      3,
    );
    assert.match(run.summary, /dry run: nothing changed/);
    const listed = hosts.map(
      (h) =>
        batonSync([
          'releases',
          '--app',
          'web',
          '--agent',
          `unix:${h.channelSocket}`,
          '--token-file',
          h.tokenFile,
        ]).stdout,
    );
    for (const out of listed) {
      assert.match(out, /\bD\b/, `no release list: ${out}`);
      assert.doesNotMatch(out, /\bG\b/, 'a dry run stored the release');
    }
  });

  it('a host busy with another deploy is waited for, naming who holds it, then deployed', async () => {
    // Another deploy holds host 1 at its hook until the action has said it waits.
    const held = gatedHook(work.dir, 'busy-gate');
    const other = batonAsync([
      ...hosts[0]!.deployArgs(await hosts[0]!.source('E', { hook: held.hook }), 'E'),
      '--agent',
      `unix:${hosts[0]!.channelSocket}`,
      '--token-file',
      hosts[0]!.tokenFile,
    ]);
    try {
      await other.waitLine((l) => l.includes('hook-started'), 'the other deploy at its hook');
      const src = await hosts[1]!.source('F');
      let opened = false;
      const { run, load } = await underLoad(
        { artifact: src, 'release-id': 'F', 'busy-timeout': '60' },
        {},
        (chunk) => {
          if (!opened && /waiting up to \d+ s more/.test(chunk)) {
            opened = true;
            void held.open();
          }
        },
      );
      assert.ok(opened, `the action never said it waits:\n${run.stdout}`);
      assert.equal(run.code, 0, run.stdout);
      assertNoDrops(load, run);
      assert.match(run.stdout, /busy: deploy \S+ by \S+ in progress for web/);
      assert.equal((await other.done).code, 0);
      assert.deepEqual(await releasesNow(), ['F', 'F', 'F']);
    } finally {
      await held.open();
      await other.done;
    }
  });

  it('on-failure stop leaves the switched hosts on the new release and switches no further host', async () => {
    const src = await hosts[0]!.source('H', { mode: 'never-ready-on h2' });
    const { run, load } = await underLoad({
      artifact: src,
      'release-id': 'H',
      strategy: 'rolling',
      'on-failure': 'stop',
    });
    assert.equal(run.code, 1, run.stdout);
    assertNoDrops(load, run);
    assert.deepEqual(await releasesNow(), ['H', 'F', 'F']);
    assert.match(run.stdout, /failed; no further host was switched/);
    const report = JSON.parse(run.outputs.report!) as { hosts: { result: string }[] };
    assert.deepEqual(
      report.hosts.map((h) => h.result),
      ['switched', 'failed', 'not-switched'],
    );
  });

  it('on-failure continue tries every other host and fails the step', async () => {
    const src = await hosts[0]!.source('I', { mode: 'never-ready-on h2' });
    const { run, load } = await underLoad({
      artifact: src,
      'release-id': 'I',
      'on-failure': 'continue',
    });
    assert.equal(run.code, 1, run.stdout);
    assertNoDrops(load, run);
    assert.deepEqual(await releasesNow(), ['I', 'F', 'I']);
    assert.equal(run.outputs['hosts-succeeded']!.split(',').length, 2);
    assert.equal(run.outputs['hosts-failed'], `${sshd.target}#${hosts[1]!.channelSocket}`);
  });
});
