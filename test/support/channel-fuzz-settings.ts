// The channel fuzz run's budget and seed (BATON_FUZZ_SEED=<seed> replays a run).
import { randomInt } from 'node:crypto';

export const SEED = Number(process.env.BATON_FUZZ_SEED ?? randomInt(2 ** 31));
/** Frames sent in all, at most. */
export const MAX_MESSAGES = 3000;
/** No new connection after this long; those open finish their few messages. */
export const TIME_BUDGET_MS = 15_000;
/** What one message may take to get its answer before it counts as a hang. */
export const PER_MESSAGE_MS = 5000;
export const WORKERS = 6;
export const MAX_PAYLOAD = 65_536;
