import { open, type FileHandle } from 'node:fs/promises';

const MAX_LINE = 8 * 1024;
const CHUNK = 64 * 1024;

/**
 * Follows a generation's output file. Apps write to files, not pipes, so that they outlive the
 * agent: a pipe whose reader died would kill a Node app with EPIPE on its next log line.
 * Keeps the last `keep` lines, hands each new line to `onLine`, and cuts the file back to zero
 * once it passes `maxBytes` (the app holds it with O_APPEND, so it just writes on at the start).
 */
export class LogTail {
  private offset = 0;
  private partial = '';
  private readonly kept: string[] = [];
  private timer: NodeJS.Timeout | undefined;
  private reading: Promise<void> = Promise.resolve();
  private fh: FileHandle | undefined;

  constructor(
    private readonly file: string,
    private readonly keep: number,
    private readonly maxBytes: number,
    private readonly onLine: (line: string) => void,
  ) {}

  /** Starts following from the current end of the file (`fromStart` to read what is there). */
  async start(intervalMs = 100, fromStart = true): Promise<void> {
    this.fh = await open(this.file, 'a+');
    if (!fromStart) this.offset = (await this.fh.stat()).size;
    this.timer = setInterval(() => void this.poll(), intervalMs);
    this.timer.unref();
  }

  /** Reads whatever is new; concurrent calls queue behind each other. */
  poll(): Promise<void> {
    this.reading = this.reading.then(() => this.readNew()).catch(() => undefined);
    return this.reading;
  }

  lines(): string[] {
    return this.partial ? [...this.kept, this.partial] : [...this.kept];
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.poll();
    if (this.partial) this.emit(this.partial);
    this.partial = '';
    await this.fh?.close();
    this.fh = undefined;
  }

  private async readNew(): Promise<void> {
    const fh = this.fh;
    if (!fh) return;
    const { size } = await fh.stat();
    if (size < this.offset) this.offset = 0;
    const buf = Buffer.alloc(CHUNK);
    while (this.offset < size) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(CHUNK, size - this.offset), this.offset);
      if (bytesRead === 0) break;
      this.offset += bytesRead;
      this.take(buf.toString('utf8', 0, bytesRead));
    }
    if (size > this.maxBytes) {
      await fh.truncate(0);
      this.offset = 0;
    }
  }

  private take(text: string): void {
    const parts = (this.partial + text).split('\n');
    this.partial = parts.pop() ?? '';
    for (const line of parts) this.emit(line);
    if (this.partial.length > MAX_LINE) {
      this.emit(this.partial);
      this.partial = '';
    }
  }

  private emit(line: string): void {
    const clipped = line.length > MAX_LINE ? `${line.slice(0, MAX_LINE)}…` : line;
    this.kept.push(clipped);
    if (this.kept.length > this.keep) this.kept.shift();
    this.onLine(clipped);
  }
}
