import { coreIO } from '../src/action/action-io.js';
import { run } from '../src/action/run.js';

// The runner cancels with SIGINT, then SIGTERM 7.5 s later: both stop further switches, and a
// switch under way is followed to its end.
const cancel = new AbortController();
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => cancel.abort());
await run(coreIO(), process.env, cancel.signal);
