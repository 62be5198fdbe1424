import http from 'node:http';
import type net from 'node:net';
import { Drainer } from './drain.js';
import { inheritedFds, notifyReady } from '../protocol/systemd.js';

export { inheritedFds, notifyReady } from '../protocol/systemd.js';

export interface ServeOptions {
  /** Name of the inherited listener to adopt; the first one when not given. */
  listener?: string;
  /** Where to listen when not run by an agent (development). */
  port?: number;
  host?: string;
  /** Runs before the server accepts anything (warm caches, open pools). */
  onStart?: () => void | Promise<void>;
  /** Runs after the drain, before the process exits (close pools, flush). */
  onStop?: () => void | Promise<void>;
  /** Longest a drain may take before remaining connections are cut. */
  drainTimeoutMs?: number;
  /** How long an idle keep-alive connection is kept open after the drain starts. */
  idleGraceMs?: number;
  /**
   * Send busy keep-alive connections away one after another over this long instead of all at
   * once, so the next generation takes the load over gradually (default 0: all at once).
   */
  drainSpreadMs?: number;
  /** Answers the agent's private readiness check (`http` readiness); 200 when not given. */
  health?: (req: http.IncomingMessage, res: http.ServerResponse) => void;
  /** Exit the process after the drain and onStop (default true, as a service stopped by SIGTERM does). */
  exitAfterDrain?: boolean;
  /** Signals that start the drain. */
  signals?: NodeJS.Signals[];
}

export interface Served {
  /** True when the socket came from the agent, false when this process bound it itself. */
  adopted: boolean;
  address: string | net.AddressInfo | null;
  /** Drains now, as the signal would. */
  drain(): Promise<'drained' | 'deadline'>;
}

function listenOn(
  server: http.Server,
  target: { fd: number } | { port: number; host: string },
): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(target, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/**
 * One call for a Node app under baton: adopt the inherited listener (or listen normally when not
 * run by an agent), answer the agent's private health check, say READY, and drain gracefully on
 * SIGTERM.
 */
export async function serve(server: http.Server, opts: ServeOptions = {}): Promise<Served> {
  const drainer = new Drainer(server);
  await opts.onStart?.();
  const fds = inheritedFds();
  const fd = opts.listener !== undefined ? fds.get(opts.listener) : fds.values().next().value;
  if (opts.listener !== undefined && fds.size > 0 && fd === undefined)
    throw new Error(
      `no inherited listener named "${opts.listener}"; the agent passed: ${[...fds.keys()].join(', ')}`,
    );
  if (fd !== undefined) await listenOn(server, { fd });
  else
    await listenOn(server, {
      port: opts.port ?? Number(process.env.PORT ?? 3000),
      host: opts.host ?? '127.0.0.1',
    });

  let health: http.Server | undefined;
  const healthPort = Number(process.env.BATON_HEALTH_PORT);
  if (Number.isInteger(healthPort) && healthPort > 0) {
    health = http.createServer(opts.health ?? ((_req, res) => res.end('ok\n')));
    await listenOn(health, { port: healthPort, host: '127.0.0.1' });
  }

  let draining: Promise<'drained' | 'deadline'> | undefined;
  const drain = () =>
    (draining ??= (async () => {
      health?.close();
      const outcome = await drainer.drain({
        idleGraceMs: opts.idleGraceMs ?? 500,
        deadlineMs: opts.drainTimeoutMs ?? 25_000,
        spreadMs: opts.drainSpreadMs ?? 0,
      });
      await opts.onStop?.();
      if (opts.exitAfterDrain ?? true) process.exit(0);
      return outcome;
    })());
  for (const signal of opts.signals ?? (['SIGTERM', 'SIGINT'] as NodeJS.Signals[]))
    process.once(signal, () => void drain());

  notifyReady();
  return { adopted: fd !== undefined, address: server.address(), drain };
}
