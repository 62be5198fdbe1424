import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { open } from 'node:fs/promises';
import { BatonError, errorMessage } from '../errors.js';

/**
 * Challenge/response over the agent's secret token. Each side sends a fresh 32-byte nonce; the
 * client answers with an HMAC of both under the token, the agent with a different HMAC of both,
 * so neither side sends anything a listener could replay, and a client learns it reached an
 * agent that holds the token before it sends an artifact.
 */
const DOMAIN = 'baton-auth-v1';

/** A token shorter than this is too easy to guess (it is 32 random bytes as `baton agent token` makes it). */
const MIN_TOKEN_CHARS = 32;
const MAX_TOKEN_BYTES = 4096;

export function makeNonce(): string {
  return randomBytes(32).toString('base64');
}

export function makeToken(): string {
  return randomBytes(32).toString('base64url');
}

function mac(token: string, role: 'client' | 'agent', agentNonce: string, clientNonce: string) {
  return createHmac('sha256', token)
    .update(`${DOMAIN}\0${role}\0${agentNonce}\0${clientNonce}`)
    .digest('hex');
}

export function clientMac(token: string, agentNonce: string, clientNonce: string): string {
  return mac(token, 'client', agentNonce, clientNonce);
}

export function agentProof(token: string, agentNonce: string, clientNonce: string): string {
  return mac(token, 'agent', agentNonce, clientNonce);
}

/** Constant-time comparison of two hex MACs (a length difference is not secret). */
export function macEquals(a: string, b: string): boolean {
  const x = Buffer.from(a, 'hex');
  const y = Buffer.from(b, 'hex');
  return x.length === y.length && x.length > 0 && timingSafeEqual(x, y);
}

/** Checks a token's shape: long enough, one line, printable. */
export function checkToken(token: string, source: string): string {
  const t = token.trim();
  if (t.length < MIN_TOKEN_CHARS || !/^[\x21-\x7e]+$/.test(t))
    throw new BatonError(
      'TOKEN_INVALID',
      `${source}: the token must be one line of at least ${MIN_TOKEN_CHARS} printable characters; make one with \`baton agent token\``,
    );
  return t;
}

/**
 * Reads a token file. On the agent's side the file must not be readable by group or others:
 * the token is the key to every deploy.
 */
export async function readTokenFile(file: string, opts: { private: boolean }): Promise<string> {
  const handle = await open(file, 'r').catch((err: unknown) => {
    throw new BatonError('TOKEN_INVALID', `cannot read token file ${file}: ${errorMessage(err)}`);
  });
  try {
    const st = await handle.stat();
    if (!st.isFile() || st.size > MAX_TOKEN_BYTES)
      throw new BatonError('TOKEN_INVALID', `${file} is not a token file`);
    if (opts.private && (st.mode & 0o077) !== 0)
      throw new BatonError(
        'TOKEN_INVALID',
        `${file} is readable by others (mode ${(st.mode & 0o777).toString(8)}); run chmod 600 ${file}`,
      );
    return checkToken(await handle.readFile('utf8'), file);
  } finally {
    await handle.close();
  }
}

/**
 * Counts failed logins per peer in a sliding window. Past the limit a peer is refused outright
 * until its oldest failure leaves the window. Behind SSH every peer is 127.0.0.1, so this also
 * caps the rate of guesses overall, which is what matters.
 */
export class FailureLimiter {
  private readonly failures = new Map<string, number[]>();

  constructor(
    private readonly max = 5,
    private readonly windowMs = 60_000,
    private readonly now: () => number = Date.now,
  ) {}

  private recent(peer: string): number[] {
    const since = this.now() - this.windowMs;
    const list = (this.failures.get(peer) ?? []).filter((t) => t > since);
    if (list.length) this.failures.set(peer, list);
    else this.failures.delete(peer);
    return list;
  }

  /** Milliseconds until this peer may try again; 0 when it may now. */
  blockedFor(peer: string): number {
    const list = this.recent(peer);
    if (list.length < this.max) return 0;
    return Math.max(1, list[list.length - this.max]! + this.windowMs - this.now());
  }

  fail(peer: string): void {
    const list = this.recent(peer);
    list.push(this.now());
    // Memory stays bounded whatever a peer does: a few times per peer, and peers whose failures
    // have all left the window are forgotten.
    this.failures.set(peer, list.slice(-this.max));
    if (this.failures.size > 1000) for (const p of [...this.failures.keys()]) this.recent(p);
    // Past that, many addresses failing at once (IPv6 has plenty): the oldest are let go.
    for (const p of this.failures.keys()) {
      if (this.failures.size <= 10_000) break;
      this.failures.delete(p);
    }
  }

  /** Peers with a failure in the window (for tests and status). */
  get size(): number {
    return this.failures.size;
  }
}
