// Shared by the tests, the benches and the demo (see README.md in this folder).
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

/** A fresh directory under the system temp dir, and the function that removes it. */
export async function tempDir(
  prefix = 'baton-test-',
): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** Runs `fn` in a fresh temp dir, removed afterwards whatever `fn` did. */
export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const tmp = await tempDir();
  try {
    return await fn(tmp.dir);
  } finally {
    await tmp.cleanup();
  }
}
