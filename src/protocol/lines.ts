/**
 * Splits a byte stream into lines with a hard limit: `onOverflow` fires (and reading stops) when a
 * line grows past `maxLine` bytes, so a peer cannot make us buffer without end.
 */
export function readLines(
  stream: NodeJS.ReadableStream,
  maxLine: number,
  onLine: (line: string) => void,
  onOverflow: () => void,
): void {
  let buffered = '';
  let overflowed = false;
  stream.setEncoding('utf8');
  const overflow = () => {
    overflowed = true;
    buffered = '';
    onOverflow();
  };
  stream.on('data', (chunk: string) => {
    if (overflowed) return;
    buffered += chunk;
    const parts = buffered.split('\n');
    buffered = parts.pop() ?? '';
    for (const line of parts) {
      if (line.length > maxLine) return overflow();
      onLine(line);
    }
    if (buffered.length > maxLine) overflow();
  });
}
