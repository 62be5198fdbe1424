import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import ssh2 from 'ssh2';
import { errorCode } from '../../src/errors.js';
import {
  checkHostKey,
  fingerprint,
  hostKeyAlgorithms,
  hostKeyError,
  normalizeFingerprint,
} from '../../src/transport/known-hosts.js';
import { tempDir } from '../../support/temp-dir.js';

const { utils } = ssh2;

const run = promisify(execFile);

/** A fresh public key: its known_hosts form and its blob. */
function newKey(type: 'ed25519' | 'ecdsa' = 'ed25519') {
  const pair =
    type === 'ed25519'
      ? utils.generateKeyPairSync('ed25519')
      : utils.generateKeyPairSync('ecdsa', { bits: 256 });
  const [keyType, base64] = pair.public.split(' ') as [string, string];
  return { line: `${keyType} ${base64}`, blob: Buffer.from(base64, 'base64') };
}

const a = newKey();
const b = newKey();
const verdict = (knownHosts: string | string[], host: string, port: number, key: Buffer) =>
  checkHostKey({ knownHosts, host, port, key }).kind;

describe('known_hosts matching', () => {
  it('matches a plain host name on port 22, and no other port', () => {
    const known = `example.com ${a.line}`;
    assert.equal(verdict(known, 'example.com', 22, a.blob), 'match');
    assert.equal(verdict(known, 'EXAMPLE.com', 22, a.blob), 'match');
    assert.equal(verdict(known, 'example.com', 2222, a.blob), 'unknown');
    assert.equal(verdict(known, 'other.example.com', 22, a.blob), 'unknown');
  });

  it('matches [host]:port only on that port', () => {
    const known = `[127.0.0.1]:2222 ${a.line}`;
    assert.equal(verdict(known, '127.0.0.1', 2222, a.blob), 'match');
    assert.equal(verdict(known, '127.0.0.1', 22, a.blob), 'unknown');
    assert.equal(verdict(known, '127.0.0.1', 2223, a.blob), 'unknown');
    assert.equal(verdict(`[::1]:2222 ${a.line}`, '::1', 2222, a.blob), 'match');
  });

  it('matches any name of a comma-separated list', () => {
    const known = `web1,10.0.0.5,[web1.example.com]:2200 ${a.line}`;
    assert.equal(verdict(known, 'web1', 22, a.blob), 'match');
    assert.equal(verdict(known, '10.0.0.5', 22, a.blob), 'match');
    assert.equal(verdict(known, 'web1.example.com', 2200, a.blob), 'match');
    assert.equal(verdict(known, 'web1.example.com', 22, a.blob), 'unknown');
  });

  it('matches wildcards, and a negated pattern excludes a host', () => {
    const known = `*.example.com,!db.example.com ${a.line}`;
    assert.equal(verdict(known, 'web.example.com', 22, a.blob), 'match');
    assert.equal(verdict(known, 'db.example.com', 22, a.blob), 'unknown');
  });

  it('takes text or lines, skipping comments, blank and malformed lines', () => {
    const lines = ['# a comment', '', '   ', 'example.com', `example.com ssh-rsa ${a.line}`];
    assert.equal(verdict([...lines, `example.com ${a.line}`], 'example.com', 22, a.blob), 'match');
    assert.equal(verdict(lines.join('\r\n'), 'example.com', 22, a.blob), 'unknown');
    // A line whose type field disagrees with the blob's own type is corrupt, not a key.
    assert.equal(
      verdict(`example.com ssh-rsa ${a.line.split(' ')[1]}`, 'example.com', 22, a.blob),
      'unknown',
    );
  });

  it('calls a host listed with another key a mismatch, naming both fingerprints', () => {
    const result = checkHostKey({
      knownHosts: `example.com ${b.line}`,
      host: 'example.com',
      port: 22,
      key: a.blob,
    });
    assert.deepEqual(result, {
      kind: 'mismatch',
      fingerprint: fingerprint(a.blob),
      expected: [fingerprint(b.blob)],
    });
    const err = hostKeyError(result, 'example.com', 22);
    assert.equal(err?.code, 'SSH_HOST_KEY_MISMATCH');
    assert.match(err.message, new RegExp(fingerprint(a.blob).replace(/[+/]/g, '\\$&')));
  });

  it('accepts a key listed on one of several lines for the host', () => {
    const known = [`example.com ${b.line}`, `example.com ${a.line}`];
    assert.equal(verdict(known, 'example.com', 22, a.blob), 'match');
  });

  it('refuses an @revoked key even where another line lists it as good', () => {
    const known = [`example.com ${a.line}`, `@revoked example.com ${a.line}`];
    assert.equal(verdict(known, 'example.com', 22, a.blob), 'revoked');
    const pinned = checkHostKey({
      knownHosts: known,
      fingerprint: fingerprint(a.blob),
      host: 'example.com',
      port: 22,
      key: a.blob,
    });
    assert.equal(pinned.kind, 'revoked');
    assert.equal(hostKeyError(pinned, 'example.com', 22)?.code, 'SSH_HOST_KEY_MISMATCH');
    // A revoked key is not a key listed for the host: another key is then merely unknown.
    assert.equal(verdict([`@revoked example.com ${a.line}`], 'example.com', 22, b.blob), 'unknown');
  });

  it('skips @cert-authority lines', () => {
    assert.equal(
      verdict(`@cert-authority example.com ${a.line}`, 'example.com', 22, a.blob),
      'unknown',
    );
    assert.equal(
      verdict(`@cert-authority example.com ${b.line}`, 'example.com', 22, a.blob),
      'unknown',
    );
  });

  it('matches hashed entries (HMAC-SHA1 of the name, salted)', () => {
    const hashed = (name: string) => {
      const salt = randomBytes(20);
      const hash = createHmac('sha1', salt).update(name).digest();
      return `|1|${salt.toString('base64')}|${hash.toString('base64')}`;
    };
    assert.equal(verdict(`${hashed('example.com')} ${a.line}`, 'example.com', 22, a.blob), 'match');
    assert.equal(
      verdict(`${hashed('[10.1.2.3]:2222')} ${a.line}`, '10.1.2.3', 2222, a.blob),
      'match',
    );
    assert.equal(
      verdict(`${hashed('[10.1.2.3]:2222')} ${a.line}`, '10.1.2.3', 22, a.blob),
      'unknown',
    );
    assert.equal(
      verdict(`${hashed('example.com')} ${b.line}`, 'example.com', 22, a.blob),
      'mismatch',
    );
    assert.equal(verdict(`|1|garbage ${a.line}`, 'example.com', 22, a.blob), 'unknown');
  });

  it(
    'matches entries hashed by ssh-keygen -H',
    { skip: !existsSync('/usr/bin/ssh-keygen') },
    async () => {
      const tmp = await tempDir();
      try {
        const file = path.join(tmp.dir, 'known_hosts');
        await writeFile(file, `example.com ${a.line}\n[127.0.0.1]:2222 ${b.line}\n`);
        await run('ssh-keygen', ['-H', '-f', file]);
        const text = await readFile(file, 'utf8');
        assert.doesNotMatch(text, /example\.com|127\.0\.0\.1/);
        assert.equal(verdict(text, 'example.com', 22, a.blob), 'match');
        assert.equal(verdict(text, '127.0.0.1', 2222, b.blob), 'match');
        assert.equal(verdict(text, '127.0.0.1', 2222, a.blob), 'mismatch');
        assert.equal(verdict(text, '127.0.0.1', 22, b.blob), 'unknown');
      } finally {
        await tmp.cleanup();
      }
    },
  );
});

describe('host key fingerprints', () => {
  it(
    'is SHA256: and unpadded base64, as ssh-keygen -lf prints',
    { skip: !existsSync('/usr/bin/ssh-keygen') },
    async () => {
      const tmp = await tempDir();
      try {
        const file = path.join(tmp.dir, 'key.pub');
        await writeFile(file, `${a.line} comment\n`);
        const { stdout } = await run('ssh-keygen', ['-l', '-E', 'sha256', '-f', file]);
        assert.equal(stdout.split(' ')[1], fingerprint(a.blob));
      } finally {
        await tmp.cleanup();
      }
    },
  );

  it('has 43 base64 characters after the prefix', () => {
    assert.match(fingerprint(a.blob), /^SHA256:[A-Za-z0-9+/]{43}$/);
  });

  it('accepts a pinned fingerprint with or without prefix and padding', () => {
    const fp = fingerprint(a.blob);
    const bare = fp.slice('SHA256:'.length);
    for (const pinned of [fp, bare, `${bare}=`, ` ${fp} `]) {
      assert.equal(normalizeFingerprint(pinned), fp);
      assert.equal(
        checkHostKey({ fingerprint: pinned, host: 'h', port: 22, key: a.blob }).kind,
        'match',
      );
    }
  });

  it('calls a key other than the pinned one a mismatch', () => {
    const result = checkHostKey({
      fingerprint: fingerprint(b.blob),
      host: 'h',
      port: 22,
      key: a.blob,
    });
    assert.equal(result.kind, 'mismatch');
  });

  it('matches when either the pin or a known_hosts line names the key', () => {
    const check = {
      knownHosts: `h ${a.line}`,
      fingerprint: fingerprint(b.blob),
      host: 'h',
      port: 22,
    };
    assert.equal(checkHostKey({ ...check, key: a.blob }).kind, 'match');
    assert.equal(checkHostKey({ ...check, key: b.blob }).kind, 'match');
    assert.equal(checkHostKey({ ...check, key: newKey().blob }).kind, 'mismatch');
  });

  it('refuses MD5 and other non-SHA256 fingerprints as a usage error', () => {
    for (const text of ['43:51:43:a1:b5:fc:8b:b7:0a:3a:a9:b1:0f:66:73:a8', 'SHA256:short', '']) {
      assert.throws(
        () => normalizeFingerprint(text),
        (err) => errorCode(err) === 'USAGE',
      );
    }
  });
});

describe('host key algorithms offered', () => {
  it('puts the key types known_hosts lists for the host first', () => {
    const ecdsa = newKey('ecdsa');
    const algorithms = hostKeyAlgorithms(`[h]:2222 ${ecdsa.line}\nother ${a.line}`, 'h', 2222);
    assert.equal(algorithms[0], 'ecdsa-sha2-nistp256');
    assert.ok(algorithms.includes('ssh-ed25519'));
    assert.equal(hostKeyAlgorithms([], 'h', 22)[0], 'ssh-ed25519');
  });
});
