import { spawn } from 'node:child_process';

/** What one wrk run reports, parsed from its `--latency` output. */
export interface WrkResult {
  /** Completed responses (any status); wrk does not count requests that got no answer. */
  requests: number;
  seconds: number;
  non2xx: number;
  /** wrk's socket errors: connect (e.g. refused), read (reset, or FIN before a response), write, timeout. */
  errors: { connect: number; read: number; write: number; timeout: number };
  latencyMs: { p50: number; p99: number; max: number };
  raw: string;
}

export interface WrkOptions {
  url: string;
  seconds: number;
  threads: number;
  connections: number;
  /** A new connection per request: wrk sends `Connection: close` and reconnects after each answer. */
  newConnection: boolean;
  /** wrk counts a request as a timeout error once it has waited this long. */
  timeoutSeconds: number;
  /** Kills wrk (by its pid) when aborted. */
  signal?: AbortSignal;
}

const UNIT_MS: Record<string, number> = { us: 0.001, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

function durationMs(text: string, what: string): number {
  const m = /^([\d.]+)(us|ms|s|m|h)$/.exec(text);
  if (!m) throw new Error(`wrk: cannot read ${what} "${text}"`);
  return Number(m[1]) * UNIT_MS[m[2]!]!;
}

export function parseWrk(raw: string): WrkResult {
  const need = (re: RegExp, what: string): RegExpExecArray => {
    const m = re.exec(raw);
    if (!m) throw new Error(`wrk output has no ${what}:\n${raw}`);
    return m;
  };
  const total = need(/^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)/m, 'request count');
  const max = need(/^\s*Latency\s+\S+\s+\S+\s+(\S+)/m, 'latency line');
  const p50 = need(/^\s*50%\s+(\S+)/m, '50% latency (was --latency given?)');
  const p99 = need(/^\s*99%\s+(\S+)/m, '99% latency');
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(raw);
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(raw);
  return {
    requests: Number(total[1]),
    seconds: durationMs(`${total[2]}${total[3]}`, 'duration') / 1000,
    non2xx: non2xx ? Number(non2xx[1]) : 0,
    errors: {
      connect: sock ? Number(sock[1]) : 0,
      read: sock ? Number(sock[2]) : 0,
      write: sock ? Number(sock[3]) : 0,
      timeout: sock ? Number(sock[4]) : 0,
    },
    latencyMs: {
      p50: durationMs(p50[1]!, 'p50'),
      p99: durationMs(p99[1]!, 'p99'),
      max: durationMs(max[1]!, 'max latency'),
    },
    raw,
  };
}

/** Runs wrk once; killed (by its pid) if it overruns its duration by 20 s. */
export function runWrk(opts: WrkOptions): Promise<WrkResult> {
  const url = new URL(opts.url);
  if (url.hostname !== '127.0.0.1')
    throw new Error(`refusing to load anything but 127.0.0.1 (${opts.url})`);
  const args = [
    '-t',
    String(opts.threads),
    '-c',
    String(opts.connections),
    '-d',
    `${opts.seconds}s`,
    '--timeout',
    `${opts.timeoutSeconds}s`,
    '--latency',
    ...(opts.newConnection ? ['-H', 'Connection: close'] : []),
    opts.url,
  ];
  return new Promise((resolve, reject) => {
    const child = spawn('wrk', args, { stdio: ['ignore', 'pipe', 'pipe'], signal: opts.signal });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    const killer = setTimeout(
      () => child.pid !== undefined && process.kill(child.pid, 'SIGKILL'),
      (opts.seconds + 20) * 1000,
    );
    child.once('error', (e) => {
      clearTimeout(killer);
      if (e.name === 'AbortError') return reject(e);
      reject(new Error(`cannot run wrk (${e.message}); install it (Debian: apt-get install wrk)`));
    });
    child.once('close', (code, signal) => {
      clearTimeout(killer);
      if (code !== 0)
        return reject(
          new Error(`wrk ${args.join(' ')} exited with ${signal ?? `code ${code}`}\n${out}${err}`),
        );
      try {
        resolve(parseWrk(out));
      } catch (e) {
        reject(e instanceof Error ? e : new Error(String(e)));
      }
    });
  });
}
