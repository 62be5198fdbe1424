// One fuzzed connection: a maybe-proper handshake, then fuzzed frames, each checked against the model.
import type { SignedManifest } from '../../src/protocol/manifest.js';
import { PROTOCOL_VERSION, type ServerMessage } from '../../src/protocol/channel.js';
import { clientMac, makeNonce } from '../../src/transport/auth.js';
import { RawClient } from './raw-client.js';
import { SEED, MAX_MESSAGES, PER_MESSAGE_MS, MAX_PAYLOAD } from './channel-fuzz-settings.js';
import { Rng, serialize, Json, KNOWN_TYPES, mutate } from './fuzz-generators.js';
import { ConnState, expectFor } from './channel-protocol-model.js';

export interface Tally {
  messages: number;
  connections: number;
  closes: Record<string, number>;
  replies: Record<string, number>;
  authenticated: number;
  uploads: number;
  /** Uploads sent whole (random bytes: the agent must find the digest wrong). */
  uploadsSent: number;
  cut: number;
  /** Error codes the agent sent, and those deploys ended with. */
  codes: Record<string, number>;
  failures: string[];
}

export interface Fixture {
  port: number;
  token: string;
  signed: SignedManifest;
}

/** One connection's life: maybe a proper handshake, then a few fuzzed frames, checked one by one. */
export async function fuzzConnection(k: number, fx: Fixture, tally: Tally): Promise<void> {
  const rng = new Rng(SEED ^ Math.imul(k + 1, 0x9e3779b1));
  const from = `127.0.0.${2 + (k % 250)}`;
  const state: ConnState = {
    phase: 'hello',
    nonce: '',
    owed: undefined,
    uploadId: '',
    deployIds: [],
  };
  const conn = await RawClient.open(fx.port, from, {
    onMessage: (m) => {
      if (m.type !== 'upload') return;
      tally.uploads++;
      state.owed = m.bytes > 0 ? m.bytes : undefined;
      state.uploadId = m.deployId;
    },
  });
  tally.connections++;
  const fail = (i: number, label: string, why: string) =>
    tally.failures.push(
      `seed ${SEED} connection ${k} (from ${from}) frame ${i} [${label}]: ${why}; got ${JSON.stringify(conn.received).slice(-600)}`,
    );

  const valid = (i: number): Json => {
    const id = `fz-${k}-${i}`;
    const origin = { actor: `fuzz-${k}` };
    const wanted =
      state.phase === 'hello' && rng.chance(0.6)
        ? 'hello'
        : state.phase === 'auth' && rng.chance(0.6)
          ? 'auth'
          : rng.pick(KNOWN_TYPES);
    switch (wanted) {
      case 'hello':
        return {
          type: 'hello',
          protocols: rng.pick([[PROTOCOL_VERSION], [PROTOCOL_VERSION, 7], [99], [2, 3]]),
          client: `fuzz ${k}`,
        };
      case 'auth': {
        const agentNonce = state.nonce || makeNonce();
        // The agent's own nonce handed back (reflection): a right MAC, still refused.
        const clientNonce = rng.chance(0.1) ? agentNonce : makeNonce();
        const token = rng.chance(0.25) ? `${fx.token}-guess` : fx.token;
        return { type: 'auth', clientNonce, mac: clientMac(token, agentNonce, clientNonce) };
      }
      case 'deploy':
        return {
          type: 'deploy',
          deployId: id,
          app: 'web',
          manifest: fx.signed as unknown as Json,
          origin,
        };
      case 'rollback':
        return rng.chance(0.5)
          ? { type: 'rollback', deployId: id, app: 'web', origin }
          : { type: 'rollback', deployId: id, app: 'web', to: 'r0', origin };
      case 'attach':
        return {
          type: 'attach',
          deployId: state.deployIds.length ? rng.pick(state.deployIds) : id,
          after: rng.int(5),
        };
      case 'status':
        return { type: 'status', requestId: `q-${k}-${i}` };
      default:
        return { type: 'releases', requestId: `q-${k}-${i}`, app: 'web' };
    }
  };

  /** The next frame: mostly a mutated valid message, sometimes bytes of no shape at all. */
  const frameFor = (i: number): { frame: Buffer; binary: boolean; label: string } => {
    // Owed artifact bytes: often send some, at most what is owed or one byte past it.
    if (state.owed !== undefined && rng.chance(0.6)) {
      const owed = state.owed;
      const n = rng.pick([owed + 1, owed, owed, 1 + rng.int(owed)]);
      return { frame: rng.bytes(n), binary: true, label: `${n} upload bytes of ${state.owed}` };
    }
    const roll = rng.int(20);
    if (roll === 0) {
      const n = rng.chance(0.1) ? MAX_PAYLOAD + 1 + rng.int(4096) : rng.int(2048);
      return { frame: rng.bytes(n), binary: true, label: `${n} random bytes (binary)` };
    }
    if (roll === 1)
      return { frame: rng.bytes(rng.int(300)), binary: false, label: 'random bytes as text' };
    const base = valid(i);
    if (roll === 2) {
      const text = serialize(base);
      return {
        frame: Buffer.from(text.slice(0, rng.int(text.length))),
        binary: false,
        label: `truncated ${(base as { type: string }).type}`,
      };
    }
    if (roll === 3) {
      const bytes = Buffer.from(serialize(base));
      bytes[rng.int(bytes.length)] = rng.pick([0xff, 0xc3, 0x80, 0xed]);
      return {
        frame: bytes,
        binary: false,
        label: `invalid UTF-8 in ${(base as { type: string }).type}`,
      };
    }
    const { msg, ops } = rng.chance(0.3) ? { msg: base, ops: [] } : mutate(rng, base);
    return {
      frame: Buffer.from(serialize(msg)),
      binary: false,
      label: `${(base as { type: string }).type}${ops.length ? `: ${ops.join(', ')}` : ' (valid)'}`,
    };
  };

  /** Sends one frame and checks what it gets against the model; false once the connection ended. */
  const step = async (
    i: number,
    frame: Buffer,
    binary: boolean,
    label: string,
  ): Promise<boolean> => {
    const expect = expectFor(frame, binary, state, fx.token);
    const since = conn.received.length;
    const uploading = state.owed !== undefined;
    if (tally.messages >= MAX_MESSAGES) return false;
    tally.messages++;
    conn.sendFrame(frame, binary);
    if (binary && expect.kind === 'none') {
      state.owed! -= frame.length;
      if (state.owed === 0) {
        // Random bytes, all of them: the deploy must end, failed on its digest.
        state.owed = undefined;
        tally.uploadsSent++;
        const id = state.uploadId;
        let result: ServerMessage | undefined;
        const ended = await conn.holdsWithin(() => {
          result = conn.received.find((m) => m.type === 'result' && m.deployId === id);
          return result !== undefined || conn.closedWith !== undefined;
        }, PER_MESSAGE_MS);
        if (!ended) fail(i, label, `the upload for ${id} is whole, and the deploy never ends`);
        else if (result?.type === 'result' && result.outcome.error?.code !== 'DIGEST_MISMATCH')
          fail(i, label, `random bytes for ${id} ended ${JSON.stringify(result.outcome)}`);
      }
    }
    const fresh = () => conn.received.slice(since);
    if (expect.kind === 'close') {
      if (!(await conn.holdsWithin(() => conn.closedWith !== undefined, PER_MESSAGE_MS))) {
        fail(i, label, `expected a close (${expect.codes.join('/')}), the connection stayed open`);
        conn.terminate();
        return false;
      }
      const { code, reason } = conn.closedWith!;
      tally.closes[code] = (tally.closes[code] ?? 0) + 1;
      if (code === 1006 && uploading) tally.cut++;
      else if (!expect.codes.includes(code))
        fail(i, label, `closed ${code} (${reason}), expected ${expect.codes.join('/')}`);
      if (Buffer.byteLength(reason) > 123) fail(i, label, 'close reason over 123 bytes');
      if (expect.error !== undefined && !(code === 1006 && uploading)) {
        const said = fresh().filter(
          (m) => m.type === 'error' && m.requestId === undefined && m.deployId === undefined,
        );
        if (said.length !== 1 || said[0]!.type !== 'error' || said[0]!.code !== expect.error)
          fail(i, label, `expected one ${expect.error} error before the close`);
      }
      return false;
    }
    if (expect.kind === 'none') return conn.closedWith === undefined;
    let answer: ServerMessage | undefined;
    const got = await conn.holdsWithin(() => {
      answer = fresh().find(expect.match);
      return answer !== undefined || conn.closedWith !== undefined;
    }, PER_MESSAGE_MS);
    if (!got) {
      fail(i, label, 'no answer in time (a hang)');
      conn.terminate();
      return false;
    }
    if (!answer) {
      const { code, reason } = conn.closedWith!;
      tally.closes[code] = (tally.closes[code] ?? 0) + 1;
      if (code === 1006 && uploading) tally.cut++;
      else if (!(expect.orClose ?? []).includes(code))
        fail(i, label, `closed ${code} (${reason}) instead of answering`);
      return false;
    }
    tally.replies[answer.type] = (tally.replies[answer.type] ?? 0) + 1;
    if (answer.type === 'challenge') {
      state.phase = 'auth';
      state.nonce = answer.nonce;
    } else if (answer.type === 'welcome') {
      state.phase = 'ready';
      tally.authenticated++;
    } else if (answer.type === 'accepted') {
      state.deployIds.push(answer.deployId);
      if (!answer.attached) {
        // Settle the deploy before the next frame: bytes sent before its `upload` arrives
        // would be refused, and the model could not tell which came first.
        const id = answer.deployId;
        const settled = await conn.holdsWithin(
          () =>
            conn.closedWith !== undefined ||
            conn.received.some(
              (m) => (m.type === 'upload' || m.type === 'result') && m.deployId === id,
            ),
          PER_MESSAGE_MS,
        );
        if (!settled) fail(i, label, `deploy ${id} accepted, then neither upload nor result`);
      }
    }
    return conn.closedWith === undefined;
  };

  try {
    let i = 0;
    // Often a proper handshake first, so that fuzz reaches what lies behind auth.
    if (rng.chance(0.45)) {
      const hello = { type: 'hello', protocols: [PROTOCOL_VERSION], client: `fuzz ${k}` };
      if (!(await step(i++, Buffer.from(serialize(hello)), false, 'handshake hello'))) return;
      if (state.phase === 'auth') {
        const clientNonce = makeNonce();
        const auth = {
          type: 'auth',
          clientNonce,
          mac: clientMac(fx.token, state.nonce, clientNonce),
        };
        if (!(await step(i++, Buffer.from(serialize(auth)), false, 'handshake auth'))) return;
      }
    }
    for (let n = 1 + rng.int(8); n > 0 && tally.messages < MAX_MESSAGES; n--) {
      const { frame, binary, label } = frameFor(i);
      if (!(await step(i++, frame, binary, label))) return;
    }
    // Still open and in: the connection must still answer.
    if (state.phase === 'ready') {
      const status = Buffer.from(serialize({ type: 'status', requestId: `end-${k}` }));
      await step(i++, status, false, 'closing status');
    }
  } finally {
    conn.terminate();
    for (const m of conn.received) {
      const code = m.type === 'error' ? m.code : m.type === 'result' ? m.outcome.error?.code : '';
      if (code) tally.codes[code] = (tally.codes[code] ?? 0) + 1;
    }
  }
}
