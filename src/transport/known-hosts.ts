import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { BatonError } from '../errors.js';

/**
 * Host key checking the way OpenSSH's `ssh` does it, for the hosts baton deploys to: a server
 * key is accepted when a known_hosts entry for the host names it or when it has the pinned
 * fingerprint; refused when the host is listed with other keys (or the key is `@revoked`);
 * and unknown otherwise, which the caller refuses unless told not to.
 */

/** What `checkHostKey` concluded about the key a server presented. */
export type HostKeyVerdict =
  | { kind: 'match'; fingerprint: string }
  /** The host is listed, or pinned, with other keys: a reinstall or an attack. */
  | { kind: 'mismatch'; fingerprint: string; expected: string[] }
  /** An `@revoked` line names this key; it is refused whatever else is listed. */
  | { kind: 'revoked'; fingerprint: string }
  | { kind: 'unknown'; fingerprint: string };

export interface HostKeyCheck {
  /** known_hosts text or its lines. */
  knownHosts?: string | readonly string[];
  /** A pinned `SHA256:…` fingerprint, as `ssh-keygen -lf` prints it. */
  fingerprint?: string;
  /** The host name or address as the client dials it. */
  host: string;
  port: number;
  /** The server's public key blob, as ssh2's `hostVerifier` receives it. */
  key: Buffer;
}

interface Entry {
  marker: 'revoked' | undefined;
  hosts: string;
  key: Buffer;
}

/** `SHA256:` and the unpadded base64 of the key blob's SHA-256, as `ssh-keygen -lf` prints. */
export function fingerprint(key: Buffer): string {
  return 'SHA256:' + createHash('sha256').update(key).digest('base64').replace(/=+$/, '');
}

/**
 * A pinned fingerprint in the form `fingerprint()` returns. The `SHA256:` prefix and base64
 * padding are optional because people paste from different tools; MD5 (`aa:bb:…`) is
 * refused: it is too weak to pin a key with.
 */
export function normalizeFingerprint(text: string): string {
  const body = text.trim().replace(/^SHA256:/i, '');
  const unpadded = body.replace(/=+$/, '');
  if (!/^[A-Za-z0-9+/]{43}$/.test(unpadded))
    throw new BatonError(
      'USAGE',
      `"${text}" is not a SHA256 host key fingerprint: expected SHA256:<43 base64 characters>, ` +
        'as printed by `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the server',
    );
  return 'SHA256:' + unpadded;
}

/** The name known_hosts stores for a host: bare on port 22, `[host]:port` on any other. */
export function hostEntryName(host: string, port: number): string {
  const name = host.toLowerCase();
  return port === 22 ? name : `[${name}]:${port}`;
}

/** Decides whether `key` is the right key for `host:port` (see `HostKeyVerdict`). */
export function checkHostKey(check: HostKeyCheck): HostKeyVerdict {
  const received = fingerprint(check.key);
  const name = hostEntryName(check.host, check.port);
  const entries = parseKnownHosts(check.knownHosts ?? []).filter((e) => hostMatches(e.hosts, name));
  // OpenSSH checks revocation before anything else, so that a key listed as good somewhere
  // (or pinned by fingerprint) cannot outvote the line that revokes it.
  if (entries.some((e) => e.marker === 'revoked' && e.key.equals(check.key)))
    return { kind: 'revoked', fingerprint: received };
  const listed = entries.filter((e) => e.marker === undefined);
  const pinned = check.fingerprint === undefined ? [] : [normalizeFingerprint(check.fingerprint)];
  if (listed.some((e) => e.key.equals(check.key)) || pinned.includes(received))
    return { kind: 'match', fingerprint: received };
  const expected = [...new Set([...pinned, ...listed.map((e) => fingerprint(e.key))])];
  if (expected.length > 0) return { kind: 'mismatch', fingerprint: received, expected };
  return { kind: 'unknown', fingerprint: received };
}

/** ssh2's host key algorithms, strongest first. */
const HOST_KEY_ALGORITHMS = [
  'ssh-ed25519',
  'ecdsa-sha2-nistp256',
  'ecdsa-sha2-nistp384',
  'ecdsa-sha2-nistp521',
  'rsa-sha2-512',
  'rsa-sha2-256',
  'ssh-rsa',
];

/**
 * The host key algorithms to offer `host:port`, those of the key types known_hosts lists
 * for it first, as OpenSSH orders them: a server with several host keys would otherwise
 * present another type and look like a mismatch.
 */
export function hostKeyAlgorithms(
  knownHosts: string | readonly string[],
  host: string,
  port: number,
): string[] {
  const name = hostEntryName(host, port);
  const types = parseKnownHosts(knownHosts)
    .filter((e) => e.marker === undefined && hostMatches(e.hosts, name))
    .map((e) => keyType(e.key));
  // An RSA key signs with any of three algorithms; every other type names its one.
  const known = HOST_KEY_ALGORITHMS.filter((a) =>
    types.includes(a.startsWith('rsa-sha2-') ? 'ssh-rsa' : a),
  );
  return [...known, ...HOST_KEY_ALGORITHMS.filter((a) => !known.includes(a))];
}

/**
 * The error refusing a key `checkHostKey` did not match, saying what was received and what
 * to do; undefined for a match. An unknown key is the caller's to accept, if told to.
 */
export function hostKeyError(
  verdict: HostKeyVerdict,
  host: string,
  port: number,
): BatonError | undefined {
  const name = hostEntryName(host, port);
  switch (verdict.kind) {
    case 'match':
      return undefined;
    case 'unknown':
      return new BatonError(
        'SSH_HOST_KEY_UNKNOWN',
        `the host key of ${name} is not known; it presented ${verdict.fingerprint}. Check that ` +
          'fingerprint out of band (on the server: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) ' +
          `and pass it as the fingerprint, or add ${name}'s line to known_hosts (ssh-keyscan -p ` +
          `${port} ${host}, then compare), or set acceptUnknownHostKey to trust it unchecked`,
      );
    case 'mismatch':
      return new BatonError(
        'SSH_HOST_KEY_MISMATCH',
        `HOST KEY MISMATCH: ${name} presented ${verdict.fingerprint} but ` +
          `${verdict.expected.join(' or ')} was expected. Someone may be intercepting the ` +
          'connection (man-in-the-middle), or the server was reinstalled: verify the new key out ' +
          'of band before changing known_hosts or the fingerprint. acceptUnknownHostKey does ' +
          'not override this',
      );
    case 'revoked':
      return new BatonError(
        'SSH_HOST_KEY_MISMATCH',
        `${name} presented the host key ${verdict.fingerprint}, which known_hosts marks ` +
          '@revoked: refused',
      );
  }
}

/** Entries of known_hosts text; lines it cannot use are skipped, as OpenSSH skips them. */
function parseKnownHosts(text: string | readonly string[]): Entry[] {
  const lines =
    typeof text === 'string' ? text.split(/\r?\n/) : text.flatMap((l) => l.split(/\r?\n/));
  const entries: Entry[] = [];
  for (const raw of lines) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const fields = line.split(/\s+/);
    let marker: Entry['marker'];
    if (fields[0]?.startsWith('@')) {
      const word = fields.shift();
      // A @cert-authority line trusts a CA to sign host certificates; ssh2 does not accept
      // host certificates, so such a line can never vouch for a key here: skipped.
      if (word !== '@revoked') continue;
      marker = 'revoked';
    }
    const [hosts, type, blob] = fields;
    if (hosts === undefined || type === undefined || blob === undefined) continue;
    const key = Buffer.from(blob, 'base64');
    // A blob starts with its own type name: a line whose two disagree is corrupt.
    if (keyType(key) !== type) continue;
    entries.push({ marker, hosts, key });
  }
  return entries;
}

/** The type name a key blob starts with (an SSH string), or undefined if malformed. */
function keyType(blob: Buffer): string | undefined {
  if (blob.length < 4) return undefined;
  const length = blob.readUInt32BE(0);
  if (length === 0 || length > 64 || 4 + length > blob.length) return undefined;
  return blob.subarray(4, 4 + length).toString('latin1');
}

/**
 * Whether a known_hosts host field names `name`: a hashed `|1|salt|hash` entry, or a
 * comma-separated list of patterns (`*`, `?`, and `!` to exclude) compared without case.
 */
function hostMatches(field: string, name: string): boolean {
  if (field.startsWith('|1|')) return hashedMatches(field, name);
  let matched = false;
  for (const pattern of field.toLowerCase().split(',')) {
    const negated = pattern.startsWith('!');
    if (!globMatches(negated ? pattern.slice(1) : pattern, name)) continue;
    // As in OpenSSH, one matching negation excludes the host whatever else matches.
    if (negated) return false;
    matched = true;
  }
  return matched;
}

/** `|1|base64(salt)|base64(HMAC-SHA1(salt, name))`, as `ssh-keygen -H` writes. */
function hashedMatches(field: string, name: string): boolean {
  const [, , salt, hash] = field.split('|');
  if (salt === undefined || hash === undefined) return false;
  const want = Buffer.from(hash, 'base64');
  const got = createHmac('sha1', Buffer.from(salt, 'base64')).update(name).digest();
  return want.length === got.length && timingSafeEqual(want, got);
}

function globMatches(pattern: string, name: string): boolean {
  if (!/[*?]/.test(pattern)) return pattern === name;
  const re = pattern
    .replace(/[.+^${}()|[\]\\]/g, '\\$&')
    .replace(/\*/g, '.*')
    .replace(/\?/g, '.');
  return new RegExp(`^${re}$`).test(name);
}
