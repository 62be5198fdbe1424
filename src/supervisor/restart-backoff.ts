/**
 * The waits between tries to start an app that keeps failing: doubling from
 * `restart.initialBackoffMs` up to `restart.maxBackoffMs`, back to the start after a generation
 * served long enough. A wait can be cut short (a stop, a deploy, an upgrade).
 */
export class RestartBackoff {
  private nextMs: number;
  private wake: (() => void) | undefined;

  constructor(private readonly restart: { initialBackoffMs: number; maxBackoffMs: number }) {
    this.nextMs = restart.initialBackoffMs;
  }

  /** The wait before the next try; the one after it doubles, up to the maximum. */
  next(): number {
    const wait = this.nextMs;
    this.nextMs = Math.min(Math.max(wait * 2, 1), this.restart.maxBackoffMs);
    return wait;
  }

  reset(): void {
    this.nextMs = this.restart.initialBackoffMs;
  }

  /** Waits `ms`, or until {@link interrupt}. */
  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.wake = undefined;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wake = done;
    });
  }

  /** Ends the wait under way, if any. */
  interrupt(): void {
    this.wake?.();
  }
}
