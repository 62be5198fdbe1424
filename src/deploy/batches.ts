import { BatonError } from '../errors.js';

/** How many hosts a rolling batch takes: a count, or a share of the fleet. */
export type BatchSize = { count: number } | { percent: number };

/** Reads `3` or `25%`; `what` names the setting in the error. */
export function parseBatchSize(text: string, what: string): BatchSize {
  const percent = /^(\d{1,3})\s*%$/.exec(text.trim());
  if (percent) {
    const n = Number(percent[1]);
    if (n < 1 || n > 100)
      throw new BatonError('USAGE', `${what}: "${text}" is not a percentage from 1% to 100%`);
    return { percent: n };
  }
  if (!/^\d+$/.test(text.trim()) || Number(text) < 1)
    throw new BatonError(
      'USAGE',
      `${what}: "${text}" is not a number of hosts (1 or more) nor a percentage such as 25%`,
    );
  return { count: Number(text) };
}

/**
 * The hosts in switch order, cut into batches: one batch for `parallel`, batches of
 * `size` for `rolling` (a percentage rounds up, so 25% of 3 hosts is 1 host a batch).
 */
export function batchesOf<T>(
  items: readonly T[],
  strategy: 'parallel' | 'rolling',
  size: BatchSize,
): T[][] {
  if (items.length === 0) return [];
  if (strategy === 'parallel') return [[...items]];
  const n =
    'count' in size ? size.count : Math.max(1, Math.ceil((items.length * size.percent) / 100));
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += n) out.push(items.slice(i, i + n));
  return out;
}

/**
 * Runs `fn` on every item, at most `limit` at once, in order of the items; resolves with the
 * results in that order. `fn` must not throw (it returns its failure as a value), so one
 * host's failure never leaves another's work unawaited.
 */
export async function eachLimited<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  return results;
}
