import assert from 'node:assert/strict';
import { mkdir, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { list } from 'tar';
import { ReleaseStore, type StoreOptions } from '../../src/artifact/store.js';
import { errorCode } from '../../src/errors.js';

/** A file's content, or a symlink (`{ link: target }`), by '/'-separated path. */
export type Tree = Record<string, string | Buffer | { link: string }>;

/** Writes `tree` under `dir`, in the order given (tests vary it). */
export async function writeTree(dir: string, tree: Tree): Promise<void> {
  for (const [rel, content] of Object.entries(tree)) {
    const file = path.join(dir, rel);
    await mkdir(path.dirname(file), { recursive: true });
    if (typeof content === 'object' && 'link' in content) await symlink(content.link, file);
    else await writeFile(file, content);
  }
}

/** Entry paths and types of a tar.gz, in archive order. */
export async function listEntries(file: string): Promise<{ path: string; type: string }[]> {
  const entries: { path: string; type: string }[] = [];
  await list({ file, onReadEntry: (e) => entries.push({ path: e.path, type: e.type }) });
  return entries;
}

/** Expects `fn` to fail with the error code `code`; returns the error for further checks. */
export async function rejectsWith(fn: () => unknown, code: string): Promise<Error> {
  try {
    await fn();
  } catch (err) {
    assert.equal(errorCode(err), code, err instanceof Error ? err.message : String(err));
    return err as Error;
  }
  assert.fail(`expected ${code}, but it succeeded`);
}

/**
 * A release store under `root`, initialised as an agent opens it: app `web`, archives up to
 * 10 MiB, unsigned ones refused; `opts` (the trusted keys, say) override.
 */
export async function openStore(root: string, opts: Partial<StoreOptions>): Promise<ReleaseStore> {
  const store = new ReleaseStore({
    root,
    app: 'web',
    keep: 5,
    trustedKeys: [],
    allowUnsigned: false,
    maxArchiveBytes: 10 * 1024 * 1024,
    ...opts,
  });
  await store.init();
  return store;
}
