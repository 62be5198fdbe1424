import { fstatSync, ftruncateSync, readSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { StringDecoder } from 'node:string_decoder';

const MAX_LINE = 8 * 1024;
const CHUNK = 64 * 1024;
// The hole an app writing without O_APPEND leaves when the file is cut back under it.
const NUL_RUN = /\0+/g;

/** What the tail masks with: a line is masked before it is clipped or cut, never after. */
export interface LineMasker {
  mask(text: string): string;
  /** The length of the longest secret: a cut line keeps that much back for the next read. */
  readonly longest: number;
  /** A position near `at` that falls inside no secret of `text` (see SecretMasker.safeCut). */
  safeCut(text: string, at: number): number;
}

const NO_MASK: LineMasker = { mask: (text) => text, longest: 0, safeCut: (_text, at) => at };

/**
 * Follows a generation's output file. Apps write to files, not pipes, so that they outlive the
 * agent: a pipe whose reader died would kill a Node app with EPIPE on its next log line.
 * Keeps the last `keep` lines, hands each new line to `onLine` (masked, then clipped), and cuts
 * the file back to zero once it passes `maxBytes`. The app must hold the file with O_APPEND so
 * that it writes on at the new end; one that does not (a generation started by an older agent)
 * leaves a hole of NUL bytes up to its old offset, which is skipped, never emitted.
 */
export class LogTail {
  private offset = 0;
  private partial = '';
  private readonly kept: string[] = [];
  private timer: NodeJS.Timeout | undefined;
  private reading: Promise<void> = Promise.resolve();
  private fh: FileHandle | undefined;
  /** A character split between two reads is held until its last byte comes. */
  private readonly decoder = new StringDecoder('utf8');

  constructor(
    private readonly file: string,
    private readonly keep: number,
    private readonly maxBytes: number,
    private readonly onLine: (line: string) => void,
    /** Read at every line: the secrets known grow while the agent runs. */
    private readonly masker: () => LineMasker = () => NO_MASK,
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
    return this.partial
      ? [...this.kept, this.clip(this.masker().mask(this.partial))]
      : [...this.kept];
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
      this.take(this.decoder.write(buf.subarray(0, bytesRead)));
    }
    if (size > this.maxBytes) this.cutBack(fh.fd, buf);
  }

  /**
   * Reads what came since the last read and cuts the file back to zero with nothing in between
   * (synchronous calls, no turn of the event loop): a line the app writes meanwhile would be lost
   * with the cut. The lines read are handled after the cut.
   */
  private cutBack(fd: number, buf: Buffer): void {
    const pieces: string[] = [];
    for (;;) {
      const { size } = fstatSync(fd);
      if (size <= this.offset) break;
      const bytesRead = readSync(fd, buf, 0, Math.min(CHUNK, size - this.offset), this.offset);
      if (bytesRead === 0) break;
      this.offset += bytesRead;
      pieces.push(this.decoder.write(buf.subarray(0, bytesRead)));
    }
    ftruncateSync(fd, 0);
    this.offset = 0;
    for (const text of pieces) this.take(text);
  }

  private take(text: string): void {
    const parts = (this.partial + text.replace(NUL_RUN, '')).split('\n');
    this.partial = parts.pop() ?? '';
    for (const line of parts) this.emit(line);
    // Past MAX_LINE, and past the longest secret too, so that what is kept back for a secret
    // still leaves a line's worth to emit.
    while (this.partial.length > MAX_LINE + this.masker().longest && this.flushPartial());
  }

  /**
   * Emits the first MAX_LINE characters of a line too long to wait for, nothing lost. The cut
   * never falls inside a secret, and what may be the start of a secret that the next read
   * completes stays behind (the caller keeps the longest secret's length), so that no piece of
   * one is emitted unmasked.
   */
  private flushPartial(): boolean {
    const text = this.partial;
    const cut = this.masker().safeCut(text, MAX_LINE);
    if (cut <= 0) return false;
    this.partial = text.slice(cut);
    this.emit(text.slice(0, cut));
    return true;
  }

  private emit(line: string): void {
    const clipped = this.clip(this.masker().mask(line));
    this.kept.push(clipped);
    if (this.kept.length > this.keep) this.kept.shift();
    this.onLine(clipped);
  }

  private clip(line: string): string {
    return line.length > MAX_LINE ? `${line.slice(0, MAX_LINE)}…` : line;
  }
}
