// Seeded generators of random and mutated JSON messages, for the channel fuzz.

/** mulberry32: small, fast, and the same sequence for the same seed everywhere. */
export class Rng {
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

export const NASTY_STRINGS = [
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

export function randomString(rng: Rng): string {
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
export function deepNesting(rng: Rng): string {
  const depth = rng.pick([10, 100, 1000, 5000, 20_000]);
  return `\u0000deep ${depth} ${rng.pick(['array', 'object'])} ${rng.pick(['1', '"leaf"'])}\u0000`;
}

/** JSON text of a message, deep placeholders expanded. */
export function serialize(msg: unknown): string {
  return JSON.stringify(msg).replace(
    /"\\u0000deep (\d+) (array|object) (1|\\"leaf\\")\\u0000"/g,
    (_, depth: string, kind: string, leaf: string) => {
      const [open, close] = kind === 'array' ? ['[', ']'] : ['{"a":', '}'];
      const n = Number(depth);
      return open.repeat(n) + leaf.replaceAll('\\', '') + close.repeat(n);
    },
  );
}

export function randomValue(rng: Rng, depth = 0): unknown {
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

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
export type Path = (string | number)[];

export function paths(v: Json, at: Path = [], out: Path[] = []): Path[] {
  out.push(at);
  if (Array.isArray(v)) v.forEach((x, i) => paths(x, [...at, i], out));
  else if (v !== null && typeof v === 'object')
    for (const [k, x] of Object.entries(v)) paths(x, [...at, k], out);
  return out;
}

export function getAt(root: Json, p: Path): Json {
  let v: Json = root;
  for (const k of p) v = (v as Record<string | number, Json>)[k]!;
  return v;
}

/** Sets (or with `undefined`, deletes) the value at `p`; the root itself is replaced by returning. */
export function setAt(root: Json, p: Path, value: Json | undefined): Json {
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

export const KNOWN_TYPES = ['hello', 'auth', 'deploy', 'rollback', 'attach', 'status', 'releases'];

export function mutate(rng: Rng, msg: Json): { msg: Json; ops: string[] } {
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
