import assert from 'node:assert/strict';
import { isUtf8 } from 'node:buffer';
import { randomInt } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { SignedManifest } from '../../src/artifact/manifest.js';
import { deployToHost } from '../../src/deploy/host-deploy.js';
import {
  ClientMessageSchema,
  CloseCode,
  PROTOCOL_VERSION,
  SUPPORTED_PROTOCOLS,
  type ClientMessage,
  type ServerMessage,
} from '../../src/protocol/channel.js';
import type { AgentStatus } from '../../src/supervisor/agent.js';
import { clientMac, makeNonce } from '../../src/transport/auth.js';
import { AgentClient } from '../../src/transport/client.js';
import { directDialer } from '../../src/transport/dialer.js';
import { batonSync } from '../../support/baton-cli.js';
import { type ChannelAgent, startChannelAgent } from '../../support/channel-agent.js';
import { withDeadline } from '../../support/deadline.js';
import { get } from '../../support/http-get.js';
import { startLoad } from '../../support/load-client.js';
import { RawClient } from '../support/raw-client.js';

/*
 * Thousands of random and mutated messages against a live agent, over many connections, before
 * and after auth. A model of the protocol predicts what each one must get (a reply, an error
 * and a close, a close code) and every prediction is checked within a bounded wait: a message
 * that gets nothing is a hang. The app serves under load throughout; at the end a good client
 * gets in, and the agent still deploys. Seeded: BATON_FUZZ_SEED=<seed> replays a run. Each
 * connection draws from its own generator, so its frames repeat whatever the interleaving, up to
 * what other connections did meanwhile (an app busy with another's deploy, say).
 */

const SEED = Number(process.env.BATON_FUZZ_SEED ?? randomInt(2 ** 31));
/** Frames sent in all, at most. */
const MAX_MESSAGES = 3000;
/** No new connection after this long; those open finish their few messages. */
const TIME_BUDGET_MS = 15_000;
/** What one message may take to get its answer before it counts as a hang. */
const PER_MESSAGE_MS = 5000;
const WORKERS = 6;
const MAX_PAYLOAD = 65_536;

/** mulberry32: small, fast, and the same sequence for the same seed everywhere. */
class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  next(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
}

// --- random values ---------------------------------------------------------------------------

const NASTY_STRINGS = [
  '',
  ' ',
  'web',
  'r0',
  '..',
  '../../etc/passwd',
  '/etc/shadow',
  'é',
  '🦀🦀',
  '\u0000',
  '\ud800',
  '\u202e',
  'a'.repeat(129),
  '__proto__',
  'constructor',
  '%s%n',
  '<script>',
  'hello',
  'auth',
  'deploy',
  'DROP TABLE',
];

function randomString(rng: Rng): string {
  switch (rng.int(5)) {
    case 0:
      return rng.pick(NASTY_STRINGS);
    case 1:
      return rng.bytes(rng.int(40)).toString('base64');
    case 2:
      // Huge: sometimes past maxPayload on its own.
      return rng.pick(['x', 'é', '🦀', '\\', '"']).repeat(1000 + rng.int(40_000));
    case 3:
      return String.fromCharCode(...Array.from({ length: rng.int(30) }, () => rng.int(0x3000)));
    default:
      return rng.bytes(1 + rng.int(30)).toString('hex');
  }
}

/**
 * Nested arrays or objects, up to 20,000 deep. JSON.stringify (and any walk of ours) would run
 * out of stack on that, so a deep value is a placeholder until the frame is written: `serialize`
 * puts the nesting in as text. The agent's JSON.parse takes it whole.
 */
function deepNesting(rng: Rng): string {
  const depth = rng.pick([10, 100, 1000, 5000, 20_000]);
  return `\u0000deep ${depth} ${rng.pick(['array', 'object'])} ${rng.pick(['1', '"leaf"'])}\u0000`;
}

/** JSON text of a message, deep placeholders expanded. */
function serialize(msg: unknown): string {
  return JSON.stringify(msg).replace(
    /"\\u0000deep (\d+) (array|object) (1|\\"leaf\\")\\u0000"/g,
    (_, depth: string, kind: string, leaf: string) => {
      const [open, close] = kind === 'array' ? ['[', ']'] : ['{"a":', '}'];
      const n = Number(depth);
      return open.repeat(n) + leaf.replaceAll('\\', '') + close.repeat(n);
    },
  );
}

function randomValue(rng: Rng, depth = 0): unknown {
  switch (rng.int(depth > 2 ? 6 : 9)) {
    case 0:
      return null;
    case 1:
      return rng.chance(0.5);
    case 2:
      return rng.pick([0, -1, 1, 1.5, 2 ** 53, -(2 ** 31), 1e308, -1e-300, 99, 4000]);
    case 3:
    case 4:
    case 5:
      return randomString(rng);
    case 6:
      return Array.from({ length: rng.int(5) }, () => randomValue(rng, depth + 1));
    case 7:
      return Object.fromEntries(
        Array.from({ length: rng.int(5) }, () => [
          randomString(rng).slice(0, 50),
          randomValue(rng, depth + 1),
        ]),
      );
    default:
      return deepNesting(rng);
  }
}

// --- mutations -------------------------------------------------------------------------------

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type Path = (string | number)[];

function paths(v: Json, at: Path = [], out: Path[] = []): Path[] {
  out.push(at);
  if (Array.isArray(v)) v.forEach((x, i) => paths(x, [...at, i], out));
  else if (v !== null && typeof v === 'object')
    for (const [k, x] of Object.entries(v)) paths(x, [...at, k], out);
  return out;
}

function getAt(root: Json, p: Path): Json {
  let v: Json = root;
  for (const k of p) v = (v as Record<string | number, Json>)[k]!;
  return v;
}

/** Sets (or with `undefined`, deletes) the value at `p`; the root itself is replaced by returning. */
function setAt(root: Json, p: Path, value: Json | undefined): Json {
  if (p.length === 0) return value ?? null;
  const parent = getAt(root, p.slice(0, -1)) as Record<string | number, Json> | Json[];
  const key = p[p.length - 1]!;
  if (value !== undefined) {
    if (Array.isArray(parent)) parent[key as number] = value;
    else
      Object.defineProperty(parent, key, {
        value,
        enumerable: true,
        writable: true,
        configurable: true,
      });
  } else if (Array.isArray(parent)) parent.splice(key as number, 1);
  else delete parent[key];
  return root;
}

const KNOWN_TYPES = ['hello', 'auth', 'deploy', 'rollback', 'attach', 'status', 'releases'];

function mutate(rng: Rng, msg: Json): { msg: Json; ops: string[] } {
  let root = structuredClone(msg);
  const ops: string[] = [];
  for (let n = rng.int(4); n > 0; n--) {
    const all = paths(root);
    const p = rng.pick(all);
    const where = p.join('.') || '(root)';
    const here = getAt(root, p);
    switch (rng.int(9)) {
      case 0:
        ops.push(`delete ${where}`);
        root = setAt(root, p, undefined);
        break;
      case 1:
        ops.push(`random value at ${where}`);
        root = setAt(root, p, randomValue(rng) as Json);
        break;
      case 2: {
        const obj = all.filter((q) => {
          const v = getAt(root, q);
          return v !== null && typeof v === 'object' && !Array.isArray(v);
        });
        if (!obj.length) break;
        const q = rng.pick(obj);
        const key = randomString(rng).slice(0, rng.chance(0.2) ? 5000 : 40);
        ops.push(`extra field at ${q.join('.') || '(root)'}`);
        root = setAt(root, [...q, key], randomValue(rng) as Json);
        break;
      }
      case 3:
        ops.push(`huge string at ${where}`);
        root = setAt(root, p, rng.pick(['A', 'é', '0']).repeat(10_000 + rng.int(60_000)));
        break;
      case 4:
        ops.push(`deep nesting at ${where}`);
        root = setAt(root, p, deepNesting(rng));
        break;
      case 5:
        ops.push(`number for ${typeof here} at ${where}`);
        root = setAt(root, p, rng.pick([0, -1, 1, 1e21, 0.5]));
        break;
      case 6:
        ops.push(`string for ${typeof here} at ${where}`);
        root = setAt(root, p, JSON.stringify(here ?? null).slice(0, 100));
        break;
      case 7:
        ops.push('type changed');
        if (root !== null && typeof root === 'object' && !Array.isArray(root))
          root.type = rng.chance(0.6) ? rng.pick(KNOWN_TYPES) : randomString(rng).slice(0, 30);
        break;
      default:
        ops.push(`array for ${where}`);
        root = setAt(root, p, [here ?? null]);
    }
  }
  return { msg: root, ops };
}

// --- the model -------------------------------------------------------------------------------

type Phase = 'hello' | 'auth' | 'ready';

/** What a frame must get: a close (codes allowed), a matching message, or nothing in particular. */
type Expect =
  | { kind: 'close'; codes: number[]; error?: string }
  | { kind: 'message'; match: (m: ServerMessage) => boolean; orClose?: number[] }
  | { kind: 'none' };

interface ConnState {
  phase: Phase;
  nonce: string;
  /** Bytes still owed on the upload the agent asked this connection for. */
  owed: number | undefined;
  /** The deploy those bytes are for. */
  uploadId: string;
  deployIds: string[];
}

const refusal = (error: string, code: number = CloseCode.policy): Expect => ({
  kind: 'close',
  codes: [code],
  error,
});

/** Predicts, from the protocol alone, what the agent must answer to `frame` in `state`. */
function expectFor(frame: Buffer, binary: boolean, state: ConnState, token: string): Expect {
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

// --- connections -----------------------------------------------------------------------------

interface Tally {
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

interface Fixture {
  port: number;
  token: string;
  signed: SignedManifest;
}

/** One connection's life: maybe a proper handshake, then a few fuzzed frames, checked one by one. */
async function fuzzConnection(k: number, fx: Fixture, tally: Tally): Promise<void> {
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

// --- the test --------------------------------------------------------------------------------

describe('channel fuzz: random and mutated messages against a live agent', () => {
  let ch: ChannelAgent;
  let signed: SignedManifest;
  let archive: string;
  before(async () => {
    // Failed logins are expected by the hundred here: limiting them is the hostile-input test's.
    ch = await startChannelAgent({
      authFailures: 1000,
      authWindowMs: 1000,
      maxPayload: MAX_PAYLOAD,
    });
    const src = await ch.source('fuzz1');
    const out = path.join(ch.dir, 'packed');
    const r = batonSync([
      'pack',
      src,
      '--app',
      'web',
      '--out',
      out,
      '--key',
      ch.keyFile,
      '--release-id',
      'fuzz1',
    ]);
    assert.equal(r.status, 0, r.stderr);
    signed = JSON.parse(
      await readFile(path.join(out, 'fuzz1.manifest.json'), 'utf8'),
    ) as SignedManifest;
    archive = path.join(out, 'fuzz1.tar.gz');
  });
  after(async () => {
    await ch?.cleanup();
  });

  it(`${MAX_MESSAGES} frames at most: each answered as the protocol says, nothing else suffers`, async (t) => {
    t.diagnostic(`seed ${SEED} (BATON_FUZZ_SEED=${SEED} replays it)`);
    const tally: Tally = {
      messages: 0,
      connections: 0,
      closes: {},
      replies: {},
      authenticated: 0,
      uploads: 0,
      uploadsSent: 0,
      cut: 0,
      codes: {},
      failures: [],
    };
    const fx: Fixture = { port: ch.channelPort, token: ch.token, signed };
    const traffic = startLoad(ch.appPort, { workers: 2, keepAlive: true, maxRequests: 200_000 });
    try {
      const started = Date.now();
      let nextConnection = 0;
      const worker = async () => {
        while (tally.messages < MAX_MESSAGES && Date.now() - started < TIME_BUDGET_MS) {
          const k = nextConnection++;
          try {
            await fuzzConnection(k, fx, tally);
          } catch (err) {
            tally.failures.push(`seed ${SEED} connection ${k}: ${(err as Error).message}`);
          }
          if (tally.failures.length) return;
        }
      };
      await withDeadline(Promise.all(Array.from({ length: WORKERS }, worker)), 'the fuzz', 60_000);
      t.diagnostic(
        `${tally.messages} frames over ${tally.connections} connections in ${Date.now() - started} ms; ` +
          `${tally.authenticated} authenticated, ${tally.uploads} uploads asked for, ${tally.uploadsSent} sent whole, ${tally.cut} cut by a takeover; ` +
          `closes ${JSON.stringify(tally.closes)}; answers ${JSON.stringify(tally.replies)}; ` +
          `error codes ${JSON.stringify(tally.codes)}`,
      );
      // A dead agent first: every failure after its crash is only a symptom of it.
      assert.equal(
        ch.agent.proc.exitCode,
        null,
        `the agent died (seed ${SEED}):\n${ch.agent.output.slice(-25).join('\n')}`,
      );
      assert.deepEqual(tally.failures.slice(0, 5), [], `seed ${SEED}`);
      // Fewer than MAX_MESSAGES only when the time budget ran out first (a busy machine).
      assert.ok(tally.messages >= 500, `enough frames sent (${tally.messages})`);
      assert.ok(tally.authenticated > 0 && tally.replies.reply! > 0, 'fuzz reached past auth');

      // A good client gets in and gets a status reply.
      const dialer = directDialer(`ws://127.0.0.1:${ch.channelPort}`);
      const client = await withDeadline(AgentClient.connect(dialer, ch.token), 'a good client');
      try {
        const status = (await withDeadline(
          client.query({ type: 'status' }),
          'status',
        )) as AgentStatus;
        assert.equal(status.apps[0]!.generation!.releaseId, 'r0', 'no fuzzed deploy went through');
      } finally {
        client.close();
      }
      // And the agent still deploys: no session, upload or lock left behind by the fuzz.
      const outcome = await withDeadline(
        deployToHost(
          dialer,
          ch.token,
          {
            kind: 'deploy',
            deployId: 'after-fuzz',
            app: 'web',
            manifest: signed,
            archive,
            origin: { actor: 'fuzz-test' },
          },
          { event: () => undefined, note: () => undefined },
          { reconnects: 0 },
        ),
        'a deploy after the fuzz',
      );
      assert.equal(outcome.ok, true, JSON.stringify(outcome.error));
      const served = await traffic.stop();
      assert.deepEqual(served.errors, {}, `seed ${SEED}`);
      assert.equal(served.non2xx, 0);
      assert.ok(served.ok > 0);
    } finally {
      // A failed assertion above must not leave the load running to its request cap.
      await traffic.stop();
    }
    const res = await get(ch.appPort);
    assert.equal(res.status, 200);
    assert.equal(res.body.split(' ')[0], 'fuzz1');
  });
});
