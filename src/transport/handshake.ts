import { toolVersion } from '../artifact/release-id.js';
import {
  CloseCode,
  DEFAULT_MAX_PAYLOAD,
  SUPPORTED_PROTOCOLS,
  type ClientMessage,
  type ServerMessage,
} from '../protocol/channel.js';
import type { AuditLog } from './audit.js';
import { agentProof, clientMac, macEquals, makeNonce, type FailureLimiter } from './auth.js';

/** What the agent does with a message before auth: answer it, or refuse and close. */
export type HandshakeStep =
  | { kind: 'answer'; message: ServerMessage }
  | { kind: 'refuse'; closeCode: number; code: string; message: string };

export interface HandshakeDeps {
  token: string;
  limiter: FailureLimiter;
  audit: AuditLog;
  /** The largest frame accepted, announced in the challenge. */
  maxPayload?: number;
  log: (record: Record<string, unknown>) => void;
}

/**
 * The agent's side of hello and auth on one connection: a protocol both sides speak, then a
 * challenge/response under the token (see auth.ts). Only hello, then auth, is taken; anything
 * else before auth is refused.
 */
export class Handshake {
  private step: 'hello' | 'auth' | 'done' = 'hello';
  private nonce = '';
  private clientName = '';
  /** The version chosen at hello (the highest both sides speak); 0 before. */
  private chosen = 0;

  constructor(
    private readonly peer: string,
    private readonly deps: HandshakeDeps,
  ) {}

  get done(): boolean {
    return this.step === 'done';
  }

  /** The protocol version this connection speaks; 0 before hello. */
  get protocol(): number {
    return this.chosen;
  }

  take(msg: ClientMessage): HandshakeStep {
    if (this.step === 'hello') {
      if (msg.type !== 'hello') return violation('expected hello first');
      return this.hello(msg.protocols, msg.client);
    }
    if (msg.type !== 'auth') return violation('expected auth after hello');
    return this.auth(msg.clientNonce, msg.mac);
  }

  private hello(protocols: number[], client: string): HandshakeStep {
    const common = protocols.filter((p) => SUPPORTED_PROTOCOLS.includes(p));
    if (common.length === 0)
      return {
        kind: 'refuse',
        closeCode: CloseCode.protocolMismatch,
        code: 'PROTOCOL_MISMATCH',
        message: `the client speaks protocol ${protocols.join(', ')}, this agent (baton ${toolVersion()}) speaks ${SUPPORTED_PROTOCOLS.join(', ')}; upgrade the older side`,
      };
    this.step = 'auth';
    this.nonce = makeNonce();
    this.clientName = client;
    this.chosen = Math.max(...common);
    return {
      kind: 'answer',
      message: {
        type: 'challenge',
        protocol: this.chosen,
        nonce: this.nonce,
        agent: `baton ${toolVersion()}`,
        maxPayload: this.deps.maxPayload ?? DEFAULT_MAX_PAYLOAD,
      },
    };
  }

  /**
   * The MAC first: a right one always gets in, whatever other connections from the same
   * address (behind SSH, every client is 127.0.0.1) got wrong. A wrong one counts against its
   * peer; past the limit it is refused as rate-limited. The token is 32 random bytes under
   * HMAC, so the limit is there against noise and cost, not guessing.
   */
  private auth(clientNonce: string, mac: string): HandshakeStep {
    const { token, limiter, audit } = this.deps;
    const expected = clientMac(token, this.nonce, clientNonce);
    if (macEquals(mac, expected) && clientNonce !== this.nonce) {
      this.step = 'done';
      audit.record({ event: 'connected', peer: this.peer, client: this.clientName });
      return {
        kind: 'answer',
        message: { type: 'welcome', proof: agentProof(token, this.nonce, clientNonce) },
      };
    }
    const wait = limiter.blockedFor(this.peer);
    limiter.fail(this.peer);
    if (wait > 0) {
      const secs = Math.ceil(wait / 1000);
      audit.refusal({
        event: 'auth-rate-limited',
        peer: this.peer,
        reason: `too many failed logins; wrong ones refused for ${secs} s`,
      });
      return {
        kind: 'refuse',
        closeCode: CloseCode.rateLimited,
        code: 'AUTH_RATE_LIMITED',
        message: `too many failed logins from ${this.peer}; try again in ${secs} s with the right token`,
      };
    }
    if (audit.refusal({ event: 'auth-failed', peer: this.peer, reason: 'wrong token' }))
      this.deps.log({ type: 'channel', level: 'warn', msg: `auth failed from ${this.peer}` });
    return {
      kind: 'refuse',
      closeCode: CloseCode.authFailed,
      code: 'AUTH_FAILED',
      message: "authentication failed: the token is not this agent's",
    };
  }
}

function violation(message: string): HandshakeStep {
  return { kind: 'refuse', closeCode: CloseCode.policy, code: 'PROTOCOL_VIOLATION', message };
}
