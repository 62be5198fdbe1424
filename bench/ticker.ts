import { errorMessage } from '../src/errors.js';

export interface CycleStats {
  done: number;
  failed: number;
  errors: string[];
  durationsMs: number[];
}

/**
 * Runs `task` once per `periodMs` (the first after one period), never two at once and never
 * catching up: a task that overruns the period delays the next one. At most `maxRuns` runs;
 * `stop()` cancels the next run and waits for the one in progress (the task bounds itself).
 */
export function everyPeriod(
  task: () => Promise<void>,
  opts: { periodMs: number; maxRuns: number },
): { stop(): Promise<CycleStats> } {
  const stats: CycleStats = { done: 0, failed: 0, errors: [], durationsMs: [] };
  let stopped = false;
  let wake = () => undefined as void;
  const loop = async () => {
    let next = Date.now() + opts.periodMs;
    for (let run = 0; run < opts.maxRuns && !stopped; run++) {
      const wait = next - Date.now();
      if (wait > 0)
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, wait);
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      if (stopped) break;
      const started = Date.now();
      next = started + opts.periodMs;
      try {
        await task();
        stats.done++;
        stats.durationsMs.push(Date.now() - started);
      } catch (err) {
        stats.failed++;
        stats.errors.push(errorMessage(err));
      }
    }
  };
  const running = loop();
  return {
    stop: async () => {
      stopped = true;
      wake();
      await running;
      return stats;
    },
  };
}
