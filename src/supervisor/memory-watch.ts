import type { AppConfig } from '../protocol/app-schema.js';
import type { GenerationProcesses } from './generation-processes.js';
import { groupsResidentBytes } from './process-util.js';

/**
 * Samples the resident memory of a generation's processes every `limits.memoryCheckMs` against
 * `limits.memoryBytes`, and calls `over` when past it; again a while later while still over.
 * Returns the timer (undefined with no ceiling set).
 */
export function watchMemory(opts: {
  app: AppConfig;
  processes: GenerationProcesses;
  /** False once the generation stops or exits: nothing more to sample. */
  active: () => boolean;
  over: (bytes: number, limit: number) => void;
}): NodeJS.Timeout | undefined {
  const { app, processes, active } = opts;
  const limit = app.limits.memoryBytes;
  if (limit === undefined) return undefined;
  // Told again while still over, a while after: a restart put off (a deploy was running) or
  // failed must not leave the generation over its ceiling for good.
  const again = Math.max(app.restart.maxBackoffMs, app.limits.memoryCheckMs);
  let toldAt = -Infinity;
  const quiet = () => Date.now() - toldAt < again;
  let sampling = false;
  const timer = setInterval(() => {
    if (sampling || quiet() || !active()) return;
    sampling = true;
    processes.trackMainGroup();
    processes.pruneGroups();
    void groupsResidentBytes(processes.groups)
      .then((bytes) => {
        if (bytes <= limit || quiet() || !active()) return;
        toldAt = Date.now();
        opts.over(bytes, limit);
      })
      .finally(() => (sampling = false));
  }, app.limits.memoryCheckMs);
  timer.unref();
  return timer;
}
