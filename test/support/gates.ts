import { execFile } from 'node:child_process';
import { open, rm, writeFile, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

// Windows held open by the test itself, not by a clock: a deploy or a generation waits at a
// known step until the test opens its gate.

/**
 * A beforeRestart hook that waits until `open()` creates its gate file: a deploy held at a
 * known step by the test itself (bounded by the hook's own timeout).
 */
export function gatedHook(dir: string, name: string): { hook: string; open: () => Promise<void> } {
  const file = path.join(dir, name);
  return {
    // Bounded: a test that never opens it fails by the hook's timeout, not by hanging here.
    hook: `i=0; while [ ! -e ${file} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done`,
    open: () => writeFile(file, 'go'),
  };
}

/**
 * A FIFO in a release directory: a generation started from it blocks there, before it listens,
 * until `open()`: a window held open by the test itself, not by a clock. `close()` removes it.
 */
export async function gate(
  dir: string,
): Promise<{ open: () => Promise<void>; close: () => Promise<void> }> {
  const file = path.join(dir, 'gate');
  await promisify(execFile)('mkfifo', [file]);
  let handle: FileHandle | undefined;
  return {
    // Read-write, so neither this open nor the write waits for a reader (Linux): the word stays
    // in the pipe for the generation to read whenever it gets there, as long as we hold it open.
    open: async () => {
      if (handle) return;
      handle = await open(file, 'r+');
      await handle.write('go\n');
    },
    close: async () => {
      await handle?.close();
      await rm(file, { force: true });
    },
  };
}
