// Shared by the tests, the benches and the demo (see README.md in this folder).
import http from 'node:http';

/**
 * The one load client of tests, benches and the demo, one a drop cannot hide from: every
 * request sent is either answered or counted as a failure by its errno (a FIN before the
 * answer is ECONNRESET "socket hang up" in Node), and with a `timeoutMs` a request that gets
 * nothing in time counts as TIMEOUT.
 */
export interface LoadResult {
  sent: number;
  /** Requests that got a complete HTTP response, whatever its status. */
  answered: number;
  /** Requests answered 2xx. */
  ok: number;
  non2xx: number;
  errors: Record<string, number>;
  /** The first word (the fixture's release id) of every 2xx body. */
  bodies: Set<string>;
  /** Latency of every answered request, connect included, in ms. */
  latenciesMs: number[];
  /** Answers per release id and generation, from the fixture's body (`<release> <generation> <pid>`). */
  answeredBy: Map<string, { release: string; generation: string; answers: number }>;
  seconds: number;
}

export interface LoadOptions {
  workers: number;
  /** One keep-alive connection per worker, or a new connection (`Connection: close`) per request. */
  keepAlive: boolean;
  /** A request unanswered this long fails as TIMEOUT; none when not given. */
  timeoutMs?: number;
  /** Upper bound on requests, whatever happens (200,000 when not given). */
  maxRequests?: number;
}

function oneRequest(
  port: number,
  agent: http.Agent | false,
  timeoutMs: number | undefined,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/', agent }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d));
      res.once('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.once('error', reject);
      res.once('aborted', () =>
        reject(Object.assign(new Error('response aborted'), { code: 'ABORTED' })),
      );
    });
    if (timeoutMs !== undefined)
      req.setTimeout(timeoutMs, () =>
        req.destroy(Object.assign(new Error(`no answer in ${timeoutMs} ms`), { code: 'TIMEOUT' })),
      );
    req.once('error', reject);
  });
}

/**
 * Starts `workers` request loops against 127.0.0.1:port, sending GETs until `stop()` or
 * `maxRequests`; `stop()` lets in-flight requests finish (bounded by the timeout, if any).
 */
export function startLoad(
  port: number,
  opts: LoadOptions,
): { result: LoadResult; stop(): Promise<LoadResult> } {
  const result: LoadResult = {
    sent: 0,
    answered: 0,
    ok: 0,
    non2xx: 0,
    errors: {},
    bodies: new Set(),
    latenciesMs: [],
    answeredBy: new Map(),
    seconds: 0,
  };
  const max = opts.maxRequests ?? 200_000;
  const started = process.hrtime.bigint();
  let stopped = false;
  const worker = async () => {
    const agent = opts.keepAlive ? new http.Agent({ keepAlive: true, maxSockets: 1 }) : false;
    try {
      while (!stopped && result.sent < max) {
        result.sent++;
        const t0 = process.hrtime.bigint();
        try {
          const res = await oneRequest(port, agent, opts.timeoutMs);
          result.answered++;
          result.latenciesMs.push(Number(process.hrtime.bigint() - t0) / 1e6);
          if (res.status >= 200 && res.status < 300) {
            result.ok++;
            result.bodies.add(res.body.split(' ')[0]!);
          } else result.non2xx++;
          const [release = '?', generation = '?'] = res.body.split(' ');
          const key = `${release} ${generation}`;
          const seen = result.answeredBy.get(key);
          if (seen) seen.answers++;
          else result.answeredBy.set(key, { release, generation, answers: 1 });
        } catch (err) {
          const code =
            (err as NodeJS.ErrnoException).code ??
            (err instanceof Error ? err.message : String(err));
          result.errors[code] = (result.errors[code] ?? 0) + 1;
        }
      }
    } finally {
      if (agent) agent.destroy();
    }
  };
  const running = Promise.all(Array.from({ length: opts.workers }, worker));
  return {
    result,
    stop: async () => {
      stopped = true;
      await running;
      result.seconds = Number(process.hrtime.bigint() - started) / 1e9;
      return result;
    },
  };
}

/** Answers per release id, with the generations that gave them. */
export function byRelease(r: LoadResult): Map<string, { answers: number; generations: string[] }> {
  const out = new Map<string, { answers: number; generations: string[] }>();
  for (const { release, generation, answers } of r.answeredBy.values()) {
    const entry = out.get(release) ?? { answers: 0, generations: [] };
    entry.answers += answers;
    entry.generations.push(generation);
    out.set(release, entry);
  }
  for (const entry of out.values()) entry.generations.sort((a, b) => Number(a) - Number(b));
  return out;
}

/** Requests that got no answer, of every kind. */
export function failures(r: LoadResult): number {
  return Object.values(r.errors).reduce((sum, n) => sum + n, 0);
}

/** p50, p99 (nearest rank) and max of unsorted samples; NaN when there are none. */
export function latencySummary(samples: readonly number[]): {
  p50: number;
  p99: number;
  max: number;
} {
  if (samples.length === 0) return { p50: NaN, p99: NaN, max: NaN };
  const sorted = Float64Array.from(samples).sort();
  const rank = (p: number) =>
    sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
  return { p50: rank(50), p99: rank(99), max: sorted[sorted.length - 1]! };
}

/** One result for two loads that ran side by side. */
export function mergeResults(a: LoadResult, b: LoadResult): LoadResult {
  const errors = { ...a.errors };
  for (const [kind, n] of Object.entries(b.errors)) errors[kind] = (errors[kind] ?? 0) + n;
  const answeredBy = new Map([...a.answeredBy].map(([k, v]) => [k, { ...v }]));
  for (const [key, v] of b.answeredBy) {
    const seen = answeredBy.get(key);
    if (seen) seen.answers += v.answers;
    else answeredBy.set(key, { ...v });
  }
  return {
    sent: a.sent + b.sent,
    answered: a.answered + b.answered,
    ok: a.ok + b.ok,
    non2xx: a.non2xx + b.non2xx,
    errors,
    bodies: new Set([...a.bodies, ...b.bodies]),
    latenciesMs: [...a.latenciesMs, ...b.latenciesMs],
    answeredBy,
    seconds: Math.max(a.seconds, b.seconds),
  };
}
