import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DeployIdSchema } from '../../src/protocol/channel.js';
import { deployIdFor, originFromEnv } from '../../src/deploy/origin.js';
import { remoteTarget } from '../../src/cli/remote-options.js';
import { rejectsWith } from '../support/artifact-support.js';

const token = 'x'.repeat(43);
const quiet = () => undefined;

describe('remote options', () => {
  it('a deploy id from the Actions run and attempt, so a re-run of an attempt re-attaches', () => {
    const env = { GITHUB_RUN_ID: '123', GITHUB_RUN_ATTEMPT: '2' };
    const id = deployIdFor(undefined, 'deploy', 'web', 'deploy@[::1]:22', env);
    assert.equal(id, 'gh-123-2-deploy-web-deploy@___1__22');
    assert.equal(id, deployIdFor(undefined, 'deploy', 'web', 'deploy@[::1]:22', env));
    assert.ok(DeployIdSchema.safeParse(id).success);
    const manual = deployIdFor(undefined, 'rollback', 'web', 'h', {});
    assert.ok(DeployIdSchema.safeParse(manual).success, manual);
    assert.notEqual(manual, deployIdFor(undefined, 'rollback', 'web', 'h', {}));
    assert.equal(deployIdFor('mine', 'deploy', 'web', 'h', env), 'mine');
  });

  it('the origin names the Actions actor and run, or user@machine', () => {
    const o = originFromEnv({ GITHUB_ACTOR: 'octo', GITHUB_REPOSITORY: 'o/r', GITHUB_RUN_ID: '9' });
    assert.deepEqual(o, { actor: 'octo', repository: 'o/r', runId: '9' });
    assert.match(originFromEnv({}).actor, /.+@.+/);
  });

  it('refuses what cannot work, before connecting: USAGE', async () => {
    await rejectsWith(
      () => remoteTarget({ host: 'a@b', agent: 'ws://127.0.0.1:1' }, { BATON_TOKEN: token }, quiet),
      'USAGE',
    );
    await rejectsWith(() => remoteTarget({ agent: 'ws://127.0.0.1:1' }, {}, quiet), 'USAGE');
    await rejectsWith(
      () => remoteTarget({ agent: 'ws://192.0.2.1:7701' }, { BATON_TOKEN: token }, quiet),
      'USAGE',
    );
    await rejectsWith(
      () => remoteTarget({ agent: 'http://127.0.0.1:1' }, { BATON_TOKEN: token }, quiet),
      'USAGE',
    );
    await rejectsWith(
      () => remoteTarget({ agent: 'ws://127.0.0.1:1' }, { BATON_TOKEN: 'short' }, quiet),
      'TOKEN_INVALID',
    );
    await rejectsWith(
      () =>
        remoteTarget(
          { host: 'a@b', 'agent-port': 'x' },
          { BATON_TOKEN: token, SSH_AUTH_SOCK: '/s' },
          quiet,
        ),
      'USAGE',
    );
    await rejectsWith(() => remoteTarget({ host: 'a@b' }, { BATON_TOKEN: token }, quiet), 'USAGE');
  });
});
