import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { batonAsync } from '../../support/baton-cli.js';
import { type ChannelAgent, startChannelAgent } from '../../support/channel-agent.js';
import { tempDir } from '../../support/temp-dir.js';
import { errorCodeOf, outcomeOf } from '../support/cli-output.js';

const run = promisify(execFile);

describe('direct wss:// to an agent with TLS', () => {
  let ch: ChannelAgent;
  let certs: Awaited<ReturnType<typeof tempDir>>;
  let cert: string;
  before(async () => {
    certs = await tempDir();
    cert = path.join(certs.dir, 'agent.crt');
    const key = path.join(certs.dir, 'agent.key');
    // A self-signed certificate for 127.0.0.1, as a team without a CA would make one.
    await run('openssl', [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-days',
      '2',
      '-subj',
      '/CN=baton-agent',
      '-addext',
      'subjectAltName=IP:127.0.0.1',
      '-keyout',
      key,
      '-out',
      cert,
    ]);
    ch = await startChannelAgent({ tls: { cert, key } });
  });
  after(async () => {
    await ch?.cleanup();
    await certs?.cleanup();
  });
  const url = () => `wss://127.0.0.1:${ch.channelPort}`;

  it('deploys with the CA pinned', async () => {
    const src = await ch.source('tls1');
    const res = await batonAsync(
      ch.deployArgs(src, 'tls1', '--agent', url(), '--ca', cert, '--token-file', ch.tokenFile),
    ).done;
    assert.equal(res.code, 0, res.stderr);
    assert.equal(outcomeOf(res.stdout).ok, true);
  });

  it('refuses a certificate nothing vouches for, and plain ws:// to a remote address', async () => {
    const res = await batonAsync(['status', '--agent', url(), '--token-file', ch.tokenFile]).done;
    assert.notEqual(res.code, 0);
    assert.match(res.stderr, /self-signed|certificate/i);
    const plain = await batonAsync([
      'status',
      '--agent',
      'ws://192.0.2.1:7701',
      '--token-file',
      ch.tokenFile,
    ]).done;
    assert.notEqual(plain.code, 0);
    assert.equal(errorCodeOf(plain.stderr), 'USAGE', plain.stderr);
  });
});
