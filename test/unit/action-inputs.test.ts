import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { readInputs, type InputSource } from '../../src/action/inputs.js';
import { parseHosts } from '../../src/action/hosts-input.js';
import { batchesOf, parseBatchSize } from '../../src/deploy/batches.js';
import { actionYml } from '../support/run-action.js';

const TOKEN = 'tok-0123456789abcdef0123456789abcdef';
const FP = 'SHA256:' + 'A'.repeat(43);
const dir = mkdtempSync(path.join(os.tmpdir(), 'baton-inputs-'));
/** A real key (the inputs decrypt it before any host is contacted), and one with a passphrase. */
function keygen(name: string, passphrase: string): string {
  const file = path.join(dir, name);
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', passphrase, '-f', file]);
  return readFileSync(file, 'utf8');
}
const KEY = keygen('plain', '');
const LOCKED = keygen('locked', 'pass-phrase-1');
after(() => rmSync(dir, { recursive: true, force: true }));

/**
 * Inputs as the runner gives them: action.yml's defaults, then `given`. Records every name
 * the code reads and every value it masks.
 */
function source(
  given: Record<string, string>,
): InputSource & { read: Set<string>; masked: string[] } {
  const values: Record<string, string> = {};
  for (const [name, spec] of Object.entries(actionYml().inputs))
    if (spec.default !== undefined)
      values[name] = spec.default.includes('${{') ? 'ghs_x' : spec.default;
  Object.assign(values, given);
  const read = new Set<string>();
  const masked: string[] = [];
  return {
    read,
    masked,
    get(name) {
      read.add(name);
      return (values[name] ?? '').trim();
    },
    bool(name) {
      read.add(name);
      const v = (values[name] ?? '').trim();
      if (['true', 'True', 'TRUE'].includes(v)) return true;
      if (['false', 'False', 'FALSE'].includes(v)) return false;
      throw new TypeError(`${name}: not a boolean`);
    },
    secret(value) {
      masked.push(value);
    },
  };
}

const good = () => ({
  hosts: 'deploy@web1.example.com\ndeploy@web2.example.com:2222 agent-port=4701',
  'ssh-key': KEY,
  'agent-token': TOKEN,
  fingerprint: FP,
  app: 'web',
  artifact: dir,
});

function refuses(given: Record<string, string>, input: string): void {
  assert.throws(
    () => readInputs(source(given)),
    (err: Error) => {
      assert.match(err.message, new RegExp(`^input ${input}: `), err.message);
      assert.ok(!err.message.includes('\n'), `one line: ${err.message}`);
      return true;
    },
  );
}

describe('the action inputs', () => {
  it('the code reads exactly the inputs action.yml declares', () => {
    // A deploy that reads every optional input: each is given, so none is skipped.
    const src = source({
      ...good(),
      username: 'u',
      'ssh-key': LOCKED,
      'ssh-key-passphrase': 'pass-phrase-1',
      'known-hosts': 'x',
      jump: 'j@bastion',
      'agent-port': '7',
      'signing-key': 'k',
      'release-id': 'r1',
      environment: 'production',
      'environment-url': 'https://x.example',
      deployment: 'true',
    });
    readInputs(src);
    // release and rollback are read on every path too.
    const declared = Object.keys(actionYml().inputs).sort();
    assert.deepEqual([...src.read].sort(), declared);
  });

  it('masks every secret, and each line of a key, before anything else is read', () => {
    const src = source({
      ...good(),
      'ssh-key': LOCKED,
      'ssh-key-passphrase': 'pass-phrase-1',
      'signing-key': 'sk-line-one\nsk-line-two',
    });
    readInputs(src);
    for (const s of [
      TOKEN,
      'pass-phrase-1',
      LOCKED.trim(),
      'sk-line-one',
      'sk-line-two',
      LOCKED.split('\n')[1]!,
    ])
      assert.ok(src.masked.includes(s), `${s} is not masked`);
  });

  it('reads a deploy with its defaults', () => {
    const inputs = readInputs(source(good()));
    assert.deepEqual(inputs.task, { kind: 'deploy', artifact: dir });
    assert.equal(inputs.strategy, 'parallel');
    assert.equal(inputs.onFailure, 'rollback');
    assert.deepEqual(inputs.agent, { socket: '/run/baton/channel.sock' });
    assert.equal(inputs.hosts[1]!.agentPort, 4701);
    assert.equal(inputs.hosts[1]!.target, 'deploy@web2.example.com:2222');
    assert.equal(inputs.github.deployment, false);
    assert.equal(inputs.busyTimeoutMs, 300_000);
  });

  it('a deployment is on by default when environment is set, and can be turned off', () => {
    assert.equal(
      readInputs(source({ ...good(), environment: 'production' })).github.deployment,
      true,
    );
    assert.equal(
      readInputs(source({ ...good(), environment: 'production', deployment: 'false' })).github
        .deployment,
      false,
    );
  });

  it('refuses each bad or contradictory input with one line naming it', () => {
    refuses({ ...good(), hosts: '' }, 'hosts');
    refuses({ ...good(), hosts: 'web1' }, 'hosts');
    refuses({ ...good(), hosts: 'u@web1 agent-port=99999' }, 'hosts');
    refuses({ ...good(), hosts: 'u@web1 port=2' }, 'hosts');
    refuses({ ...good(), hosts: 'u@web1\nu@web1' }, 'hosts');
    refuses({ ...good(), fingerprint: '' }, 'known-hosts');
    refuses({ ...good(), fingerprint: 'MD5:aa:bb' }, 'fingerprint');
    refuses({ ...good(), 'ssh-key': 'not a key' }, 'ssh-key');
    refuses({ ...good(), 'ssh-key': LOCKED }, 'ssh-key');
    refuses(
      { ...good(), 'ssh-key': LOCKED, 'ssh-key-passphrase': 'wrong-phrase' },
      'ssh-key-passphrase',
    );
    refuses({ ...good(), timeout: '99999999' }, 'timeout');
    refuses({ ...good(), 'connect-timeout': '0' }, 'connect-timeout');
    refuses({ ...good(), 'agent-token': 'short' }, 'agent-token');
    refuses({ ...good(), rollback: 'true' }, 'rollback');
    refuses({ ...good(), rollback: 'yes' }, 'rollback');
    refuses({ ...good(), release: 'r1' }, 'release');
    refuses({ ...good(), artifact: '' }, 'artifact');
    refuses({ ...good(), artifact: path.join(dir, 'missing') }, 'artifact');
    refuses({ ...good(), strategy: 'canary' }, 'strategy');
    refuses({ ...good(), strategy: 'rolling', 'batch-size': '0' }, 'batch-size');
    refuses({ ...good(), 'batch-size': '150%' }, 'batch-size');
    refuses({ ...good(), 'max-parallel': '0' }, 'max-parallel');
    refuses({ ...good(), 'on-failure': 'ignore' }, 'on-failure');
    refuses({ ...good(), 'busy-timeout': '-1' }, 'busy-timeout');
    refuses({ ...good(), timeout: '0' }, 'timeout');
    refuses({ ...good(), deployment: 'true' }, 'deployment');
    refuses({ ...good(), environment: 'p', 'environment-url': 'shop' }, 'environment-url');
    refuses({ ...good(), jump: 'j@bastion' }, 'known-hosts');
    refuses({ ...good(), app: '../etc' }, 'app');
  });

  it('a rollback or a redeploy sends nothing and names its release', () => {
    const noArtifact = { ...good(), artifact: '' };
    assert.deepEqual(readInputs(source({ ...noArtifact, rollback: 'true' })).task, {
      kind: 'rollback',
    });
    assert.deepEqual(readInputs(source({ ...noArtifact, rollback: 'true', release: 'r1' })).task, {
      kind: 'rollback',
      release: 'r1',
    });
    assert.deepEqual(readInputs(source({ ...noArtifact, release: 'r1' })).task, {
      kind: 'redeploy',
      release: 'r1',
    });
  });
});

describe('hosts and batches', () => {
  it('reads one host per line or comma-separated, with per-host words', () => {
    const hosts = parseHosts(
      `a@h1, b@h2:2222 agent-socket=/run/x.sock\n# a comment\nh3 fingerprint=${FP}`,
      'c',
    );
    assert.deepEqual(
      hosts.map((h) => [h.label, h.target, h.agentSocket, h.fingerprint]),
      [
        ['a@h1', 'a@h1:22', undefined, undefined],
        ['b@h2:2222', 'b@h2:2222', '/run/x.sock', undefined],
        ['c@h3', 'c@h3:22', undefined, FP],
      ],
    );
  });

  it('tells apart two agents behind one SSH target', () => {
    const hosts = parseHosts('a@h1 agent-port=1\na@h1 agent-port=2', undefined);
    assert.deepEqual(
      hosts.map((h) => h.label),
      ['a@h1#1', 'a@h1#2'],
    );
  });

  it('cuts rolling batches by count or percentage, one batch for parallel', () => {
    const ten = Array.from({ length: 10 }, (_, i) => i);
    assert.deepEqual(batchesOf(ten, 'parallel', { count: 1 }).length, 1);
    assert.deepEqual(
      batchesOf(ten, 'rolling', { count: 3 }).map((b) => b.length),
      [3, 3, 3, 1],
    );
    assert.deepEqual(
      batchesOf(ten, 'rolling', parseBatchSize('25%', 'x')).map((b) => b.length),
      [3, 3, 3, 1],
    );
    assert.deepEqual(
      batchesOf([1, 2, 3], 'rolling', parseBatchSize('10%', 'x')).map((b) => b.length),
      [1, 1, 1],
    );
  });
});
