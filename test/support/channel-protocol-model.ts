// A model of the channel protocol: what each frame must get, from the connection's state.
import { isUtf8 } from 'node:buffer';
import {
  ClientMessageSchema,
  CloseCode,
  SUPPORTED_PROTOCOLS,
  type ClientMessage,
  type ServerMessage,
} from '../../src/protocol/channel.js';
import { clientMac } from '../../src/transport/auth.js';
import { MAX_PAYLOAD } from './channel-fuzz-settings.js';

export type Phase = 'hello' | 'auth' | 'ready';

/** What a frame must get: a close (codes allowed), a matching message, or nothing in particular. */
export type Expect =
  | { kind: 'close'; codes: number[]; error?: string }
  | { kind: 'message'; match: (m: ServerMessage) => boolean; orClose?: number[] }
  | { kind: 'none' };

export interface ConnState {
  phase: Phase;
  nonce: string;
  /** Bytes still owed on the upload the agent asked this connection for. */
  owed: number | undefined;
  /** The deploy those bytes are for. */
  uploadId: string;
  deployIds: string[];
}

export const refusal = (error: string, code: number = CloseCode.policy): Expect => ({
  kind: 'close',
  codes: [code],
  error,
});

/** Predicts, from the protocol alone, what the agent must answer to `frame` in `state`. */
export function expectFor(frame: Buffer, binary: boolean, state: ConnState, token: string): Expect {
  if (frame.length > MAX_PAYLOAD) return { kind: 'close', codes: [CloseCode.tooBig] };
  if (binary) {
    if (state.phase !== 'ready' || state.owed === undefined) return refusal('PROTOCOL_VIOLATION');
    if (frame.length > state.owed) return refusal('PROTOCOL_VIOLATION');
    return { kind: 'none' };
  }
  if (!isUtf8(frame)) return { kind: 'close', codes: [1007] };
  let raw: unknown;
  try {
    raw = JSON.parse(frame.toString('utf8'));
  } catch {
    return refusal('PROTOCOL_VIOLATION');
  }
  const parsed = ClientMessageSchema.safeParse(raw);
  if (!parsed.success) return refusal('PROTOCOL_VIOLATION');
  const msg: ClientMessage = parsed.data;
  if (state.phase === 'hello') {
    if (msg.type !== 'hello') return refusal('PROTOCOL_VIOLATION');
    if (!msg.protocols.some((p) => SUPPORTED_PROTOCOLS.includes(p)))
      return refusal('PROTOCOL_MISMATCH', CloseCode.protocolMismatch);
    return {
      kind: 'message',
      match: (m) => m.type === 'challenge',
      orClose: [CloseCode.rateLimited],
    };
  }
  if (state.phase === 'auth') {
    if (msg.type !== 'auth') return refusal('PROTOCOL_VIOLATION');
    const good =
      msg.clientNonce !== state.nonce && msg.mac === clientMac(token, state.nonce, msg.clientNonce);
    return good
      ? { kind: 'message', match: (m) => m.type === 'welcome' }
      : refusal('AUTH_FAILED', CloseCode.authFailed);
  }
  switch (msg.type) {
    case 'hello':
    case 'auth':
      return refusal('PROTOCOL_VIOLATION');
    case 'status':
    case 'releases':
      return {
        kind: 'message',
        match: (m) => (m.type === 'reply' || m.type === 'error') && m.requestId === msg.requestId,
      };
    default:
      return {
        kind: 'message',
        match: (m) => (m.type === 'accepted' || m.type === 'error') && m.deployId === msg.deployId,
      };
  }
}
