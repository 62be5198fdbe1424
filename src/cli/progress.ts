/** An upload bar on a terminal; on anything else, a line at each quarter. */
export class Progress {
  private startedAt = 0;
  private lastQuarter = -1;
  private drawn = false;

  constructor(private readonly stream: NodeJS.WriteStream) {}

  update(bytes: number, total: number): void {
    const now = Date.now();
    if (this.startedAt === 0) this.startedAt = now;
    const fraction = total > 0 ? bytes / total : 1;
    const secs = Math.max((now - this.startedAt) / 1000, 0.001);
    // A rate over a few milliseconds says nothing.
    const rate = secs >= 0.2 ? ` ${(bytes / 1048576 / secs).toFixed(1)} MiB/s` : '';
    const text = `upload ${mib(bytes)}/${mib(total)} MiB ${(fraction * 100).toFixed(0)}%${rate}`;
    if (this.stream.isTTY) {
      const width = 30;
      const filled = Math.round(fraction * width);
      this.stream.write(`\r[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${text}\x1b[K`);
      this.drawn = true;
      return;
    }
    const quarter = Math.floor(fraction * 4);
    if (quarter > this.lastQuarter) {
      this.lastQuarter = quarter;
      this.stream.write(`${text}\n`);
    }
  }

  /** Starts over (an upload sent again after a reconnect). */
  reset(): void {
    this.done();
    this.startedAt = 0;
    this.lastQuarter = -1;
  }

  /** Ends the bar's line so the next output starts clean. */
  done(): void {
    if (this.drawn) this.stream.write('\n');
    this.drawn = false;
  }
}

function mib(bytes: number): string {
  return (bytes / 1048576).toFixed(1);
}
