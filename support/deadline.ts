// Shared by the tests, the benches and the demo (see README.md in this folder).

/** A generous deadline that only fails a hung test; never a timing assertion. */
export const HUNG_MS = 30_000;

/** `promise`, or a rejection `hung waiting for <what>` after `ms`. */
export function withDeadline<T>(promise: Promise<T>, what: string, ms = HUNG_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`hung waiting for ${what}`)), ms);
    }),
  ]);
}

/**
 * Polls every 50 ms until `pred` holds; throws `hung waiting for <what>` at the deadline.
 * (A wait that may end either way, answering false at its deadline, is `RawClient.holdsWithin`.)
 */
export async function waitUntil(
  pred: () => boolean | Promise<boolean>,
  what: string,
): Promise<void> {
  await withDeadline(
    (async () => {
      while (!(await pred())) await new Promise((r) => setTimeout(r, 50));
    })(),
    what,
  );
}
