import { isAlive } from '../../src/supervisor/process-util.js';
import { waitUntil } from '../../support/deadline.js';

/** Waits (bounded by the test deadline) until no process has `pid`; throws if it stays. */
export async function waitGone(pid: number): Promise<void> {
  await waitUntil(() => !isAlive(pid), `pid ${pid} to exit`);
}
