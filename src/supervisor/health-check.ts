import http from 'node:http';
import { delay } from './process-util.js';

/**
 * Asks `GET path` of a generation's private loopback port every `intervalMs` until it answers
 * 2xx, then resolves; never resolves once `stopped()` says so (the wait ended otherwise).
 */
export async function pollHealth(
  port: number | undefined,
  pathName: string,
  intervalMs: number,
  stopped: () => boolean,
): Promise<'ready'> {
  while (!stopped()) {
    const status = await new Promise<number>((resolve) => {
      const req = http.get(
        { host: '127.0.0.1', port, path: pathName, timeout: 2000, agent: false },
        (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        },
      );
      req.on('timeout', () => req.destroy());
      req.on('error', () => resolve(0));
    });
    if (status >= 200 && status < 300) return 'ready';
    await delay(intervalMs);
  }
  return new Promise<'ready'>(() => undefined);
}
