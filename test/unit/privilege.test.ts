import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { AppSchema, type AppConfig } from '../../src/protocol/app-schema.js';
import {
  accountEnv,
  launchEnvironment,
  launchShell,
  resolveRunAs,
  shellQuote,
} from '../../src/supervisor/privilege.js';

const execFileAsync = promisify(execFile);

function app(fields: Record<string, unknown> = {}): AppConfig {
  return AppSchema.parse({
    name: 'web',
    command: ['/bin/true'],
    listeners: [{ name: 'http', tcp: '0' }],
    ...fields,
  });
}

/** Runs `script` the way the supervisor will: through launchShell's setup and exec. */
async function launch(
  launcher: { setup: string; exec: string },
  script: string,
  prefix = '',
): Promise<string> {
  const { stdout } = await execFileAsync('/bin/sh', [
    '-c',
    `${prefix}${launcher.setup}; LISTEN_PID=$$; export LISTEN_PID; ${launcher.exec} "$@"`,
    'web',
    '/bin/sh',
    '-c',
    script,
  ]);
  return stdout;
}

function code(expected: string): (err: unknown) => boolean {
  return (err) => {
    assert.equal((err as { code?: unknown }).code, expected, String(err));
    return true;
  };
}

describe('resolveRunAs', () => {
  it('resolves a user by name, with its primary group', async () => {
    const runAs = await resolveRunAs(app({ user: 'nobody' }), 0);
    assert.deepEqual(runAs, {
      user: 'nobody',
      uid: 65534,
      gid: 65534,
      groups: [],
      home: '/nonexistent',
    });
  });

  it('resolves a user by uid and a group by name', async () => {
    const runAs = await resolveRunAs(app({ user: '65534', group: 'nogroup' }), 0);
    assert.equal(runAs?.user, 'nobody');
    assert.equal(runAs?.uid, 65534);
    assert.equal(runAs?.gid, 65534);
  });

  it('resolves supplementary groups by name and number, without the primary group', async () => {
    const runAs = await resolveRunAs(
      app({ user: 'nobody', supplementaryGroups: ['nogroup', 'users', '4242'] }),
      0,
    );
    assert.deepEqual(runAs?.groups.sort(), [100, 4242]);
  });

  it('accepts a uid the user database does not know, given a group', async () => {
    const runAs = await resolveRunAs(app({ user: '4000123', group: 'nogroup' }), 0);
    assert.deepEqual(runAs, {
      user: '4000123',
      uid: 4000123,
      gid: 65534,
      groups: [],
      home: undefined,
    });
    await assert.rejects(resolveRunAs(app({ user: '4000123' }), 0), code('GROUP_UNKNOWN'));
  });

  it('refuses an unknown user or group', async () => {
    await assert.rejects(resolveRunAs(app({ user: 'no-such-user-zz' }), 0), code('USER_UNKNOWN'));
    await assert.rejects(
      resolveRunAs(app({ user: 'nobody', group: 'no-such-group-zz' }), 0),
      code('GROUP_UNKNOWN'),
    );
    await assert.rejects(
      resolveRunAs(app({ user: 'nobody', supplementaryGroups: ['no-such-group-zz'] }), 0),
      code('GROUP_UNKNOWN'),
    );
  });

  it('refuses root unless allowRoot', async () => {
    await assert.rejects(resolveRunAs(app({ user: 'root' }), 0), code('RUN_AS_ROOT_REFUSED'));
    await assert.rejects(resolveRunAs(app({ user: '0' }), 0), code('RUN_AS_ROOT_REFUSED'));
    const runAs = await resolveRunAs(app({ user: 'root', allowRoot: true }), 0);
    assert.equal(runAs?.uid, 0);
    assert.equal(runAs?.gid, 0);
  });

  it('refuses to run as the root agent itself unless allowRoot', async () => {
    await assert.rejects(resolveRunAs(app(), 0), code('RUN_AS_ROOT_REFUSED'));
    const runAs = await resolveRunAs(app({ allowRoot: true }), 0);
    assert.equal(runAs?.uid, 0);
    assert.equal(runAs?.user, 'root');
  });

  it('runs as an unprivileged agent itself, which cannot switch to another user', async () => {
    assert.equal(await resolveRunAs(app(), 1000), undefined);
    assert.equal(await resolveRunAs(app({ user: 'nobody' }), 65534), undefined);
    await assert.rejects(resolveRunAs(app({ user: 'nobody' }), 1000), code('USER_SWITCH_DENIED'));
    await assert.rejects(resolveRunAs(app({ user: 'root' }), 1000), code('USER_SWITCH_DENIED'));
  });
});

describe('accountEnv', () => {
  it('sets USER, LOGNAME and HOME like systemd, and nothing without an account', async () => {
    assert.deepEqual(accountEnv(await resolveRunAs(app({ user: 'nobody' }), 0)), {
      USER: 'nobody',
      LOGNAME: 'nobody',
      HOME: '/nonexistent',
    });
    assert.deepEqual(
      accountEnv({ user: '4000123', uid: 4000123, gid: 1, groups: [], home: undefined }),
      { USER: '4000123', LOGNAME: '4000123' },
    );
    assert.deepEqual(accountEnv(undefined), {});
  });
});

describe('launchShell', () => {
  it('starts the command as the user, with groups, umask and limits, keeping the pid', async () => {
    const config = app({
      user: 'nobody',
      supplementaryGroups: ['nogroup', 'users'],
      umask: '0027',
      limits: { openFiles: 777, coreBytes: 0 },
    });
    const launcher = launchShell(await resolveRunAs(config, 0), config);
    const out = await launch(
      launcher,
      'id -u; id -G; umask; ulimit -n; ulimit -c; echo "$LISTEN_PID $$"',
    );
    const [uid, groups, umask, openFiles, core, pids] = out.trim().split('\n');
    assert.equal(uid, '65534');
    assert.deepEqual(groups?.split(' ').map(Number).sort(), [100, 65534]);
    assert.equal(umask, '0027');
    assert.equal(openFiles, '777');
    assert.equal(core, '0');
    const [listenPid, pid] = pids!.split(' ');
    assert.equal(listenPid, pid, 'exec keeps the pid');
  });

  it("hands the app's environment past the switch whole: any value, over 128 KiB in all, no root-side trace", async () => {
    const config = app({ user: 'nobody' });
    const launcher = launchShell(await resolveRunAs(config, 0), config);
    const big = (c: string) => c.repeat(90 * 1024);
    const appEnv = {
      ODD: `it's "quoted" $HOME \`x\` \\ \n two lines`,
      BIG_A: big('a'),
      BIG_B: big('b'),
      i: 'the loop counter is not this',
      LISTEN_PID: 'not the shell pid',
    };
    const env = launchEnvironment(launcher, { PATH: process.env.PATH }, appEnv, {
      BATON_APP: 'web',
    });
    // Nothing of the app's own reaches the root side but in the hand-off variables.
    for (const [key, value] of Object.entries(env))
      if (!key.startsWith('BATON_LAUNCH_ENV'))
        assert.ok(!Object.values(appEnv).includes(value!), `${key} carries an app value`);
    assert.equal(
      env.BATON_LAUNCH_ENV,
      '2',
      'two chunks, each under the 128 KiB a variable may hold',
    );
    const script = `${launcher.setup}; LISTEN_PID=$$; export LISTEN_PID; ${launcher.exec} "$@"`;
    const { stdout } = await execFileAsync(
      '/bin/sh',
      [
        '-c',
        script,
        'web',
        process.execPath,
        '-e',
        'process.stdout.write(JSON.stringify(process.env))',
      ],
      { env, maxBuffer: 4 * 2 ** 20 },
    );
    const seen = JSON.parse(stdout) as Record<string, string>;
    for (const key of ['ODD', 'BIG_A', 'BIG_B', 'i']) assert.equal(seen[key], appEnv[key as 'ODD']);
    assert.equal(seen.BATON_APP, 'web');
    assert.match(seen.LISTEN_PID!, /^\d+$/, 'the shell sets LISTEN_PID, not the app env');
    assert.ok(!Object.keys(seen).some((k) => k.startsWith('BATON_LAUNCH')), 'the hand-off is gone');
  });

  it('refuses an environment name the shell could not take', async () => {
    const config = app({ user: 'nobody' });
    const launcher = launchShell(await resolveRunAs(config, 0), config);
    assert.throws(
      () => launchEnvironment(launcher, {}, { 'a;b': '1' }, {}),
      (err: unknown) => (err as { code?: string }).code === 'CONFIG_INVALID',
    );
  });

  it('converts core bytes to 512-byte blocks, rounding up', async () => {
    const launcher = launchShell(undefined, app({ limits: { coreBytes: 1000 } }));
    assert.equal(launcher.exec, 'exec');
    assert.equal((await launch(launcher, 'ulimit -c')).trim(), '2');
    const limits = await launch(launcher, 'grep "core file" /proc/self/limits');
    assert.match(limits, /core file size\s+1024\s/);
  });

  it('clears the supplementary groups of an account that has none', async () => {
    const config = app({ user: 'nobody' });
    const launcher = launchShell(await resolveRunAs(config, 0), config);
    assert.match(launcher.exec, /--clear-groups/);
    assert.equal((await launch(launcher, 'id -G')).trim(), '65534');
  });

  it('fails the start with a message when a limit cannot be raised', async () => {
    const launcher = launchShell(undefined, app({ limits: { openFiles: 777 } }));
    // An unprivileged shell whose hard limit is below the one asked for.
    const prefix = 'ulimit -n 100; ';
    const err = await execFileAsync('/usr/bin/setpriv', [
      '--reuid=65534',
      '--regid=65534',
      '--clear-groups',
      '/bin/sh',
      '-c',
      `${prefix}${launcher.setup}; ${launcher.exec} "$@"`,
      'web',
      '/bin/echo',
      'started',
    ]).then(
      () => assert.fail('started despite the limit'),
      (e: { code: number; stdout: string; stderr: string }) => e,
    );
    assert.equal(err.code, 126);
    assert.equal(err.stdout, '');
    assert.match(err.stderr, /limits\.openFiles/);
  });

  it('quotes for the shell', async () => {
    const value = `it's "$HOME" \`id\` \\ ;`;
    const { stdout } = await execFileAsync('/bin/sh', ['-c', `printf %s ${shellQuote(value)}`]);
    assert.equal(stdout, value);
  });
});
