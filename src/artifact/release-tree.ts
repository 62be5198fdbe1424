import { constants } from 'node:fs';
import { chmod, mkdir, open, symlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { BatonError } from '../errors.js';
import { refusal, type EntryPlan } from './entry-policy.js';

type Kind = 'directory' | 'file' | 'symlink';
/** A trie of what was made, so checking an entry costs its path's length, not its depth squared. */
interface Made {
  kind: Kind;
  children?: Map<string, Made>;
}

/** Group and other may never write; no special bits. */
const MODE_MASK = 0o755;
/** The owner keeps full access to directories so the release can be filled and later removed. */
const DIRECTORY_OWNER = 0o700;
const CREATE_NEW = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;

/**
 * The release being unpacked, as the archive has built it so far. Every path is checked against
 * this record, never against the disk: nothing is written through a symlink, nothing is replaced,
 * and each object is created fresh (`mkdir` without `recursive`, `O_EXCL | O_NOFOLLOW`,
 * `symlink`), so where the file system disagrees with the record (names that differ only in case
 * on a case-folding volume, say) creation fails instead of following something.
 */
export class ReleaseTree {
  readonly #root: string;
  readonly #maxFiles: number;
  readonly #made: Made = { kind: 'directory', children: new Map() };
  #count = 0;
  #listed = 0;

  constructor(root: string, maxFiles: number) {
    this.#root = root;
    this.#maxFiles = maxFiles;
  }

  /** Objects created so far: files, directories (listed or implied) and symlinks. */
  get count(): number {
    return this.#count;
  }

  /**
   * Checks `plan` against the tree and reserves what it will create; throws before any write.
   * Returns the parent directories the archive implies but has not listed, in creation order,
   * and whether the entry's own object is new (a directory may be listed after its children).
   */
  reserve(plan: EntryPlan): { missing: string[]; isNew: boolean } {
    const { parts } = plan;
    // Entries count too, so the same directory listed a million times is no way around the cap;
    // the +1 is the root's own './' entry, which makes nothing.
    if (++this.#listed > this.#maxFiles + 1) throw this.#tooMany(plan);
    let dir = this.#made;
    let depth = 0;
    for (; depth < parts.length - 1; depth++) {
      const next = dir.children?.get(parts[depth]!);
      if (next === undefined) break;
      if (next.kind !== 'directory') {
        const parent = JSON.stringify(parts.slice(0, depth + 1).join('/'));
        throw next.kind === 'symlink'
          ? refusal(
              'ARCHIVE_LINK_ESCAPE',
              plan.name,
              `would be written through the symlink ${parent}; nothing is unpacked through a link`,
            )
          : refusal('ARCHIVE_CORRUPT', plan.name, `lies under ${parent}, which is a file`);
      }
      dir = next;
    }
    const allParents = depth >= parts.length - 1;
    const existing =
      parts.length === 0 ? this.#made : allParents ? dir.children?.get(parts.at(-1)!) : undefined;
    if (existing !== undefined && !(existing.kind === 'directory' && plan.kind === 'directory'))
      throw refusal(
        'ARCHIVE_CORRUPT',
        plan.name,
        `appears again, over an earlier ${existing.kind}; entries may not replace one another`,
      );
    const implied = allParents ? 0 : parts.length - 1 - depth;
    const created = implied + (existing === undefined ? 1 : 0);
    if (this.#count + created > this.#maxFiles) throw this.#tooMany(plan);

    this.#count += created;
    const missing: string[] = [];
    let prefix = parts.slice(0, depth).join('/');
    for (; depth < parts.length - 1; depth++) {
      const made: Made = { kind: 'directory', children: new Map() };
      dir.children!.set(parts[depth]!, made);
      dir = made;
      prefix = prefix === '' ? parts[depth]! : `${prefix}/${parts[depth]}`;
      missing.push(prefix);
    }
    if (existing === undefined)
      dir.children!.set(parts.at(-1)!, {
        kind: plan.kind,
        ...(plan.kind === 'directory' ? { children: new Map<string, Made>() } : {}),
      });
    return { missing, isNew: existing === undefined };
  }

  /** Creates the implied parents `reserve` returned, as if listed with mode 0o755. */
  async parents(plan: EntryPlan, missing: string[]): Promise<void> {
    for (const dir of missing) {
      const where = path.join(this.#root, dir);
      await this.#fs(plan, () => mkdir(where, { mode: DIRECTORY_OWNER }));
      await this.#fs(plan, () => chmod(where, 0o755));
    }
  }

  async directory(plan: Extract<EntryPlan, { kind: 'directory' }>, isNew: boolean): Promise<void> {
    // The release root is created by the caller and keeps its own mode.
    if (plan.parts.length === 0) return;
    const where = this.#path(plan);
    if (isNew) await this.#fs(plan, () => mkdir(where, { mode: DIRECTORY_OWNER }));
    // chmod, not mkdir's mode: the umask must not make the release differ between hosts.
    await this.#fs(plan, () => chmod(where, (plan.mode & MODE_MASK) | DIRECTORY_OWNER));
  }

  /** Opens a new regular file for writing; the caller writes, then calls `finishFile`. */
  async openFile(plan: Extract<EntryPlan, { kind: 'file' }>): Promise<FileHandle> {
    return this.#fs(plan, () => open(this.#path(plan), CREATE_NEW, 0o600));
  }

  async finishFile(plan: Extract<EntryPlan, { kind: 'file' }>, file: FileHandle): Promise<void> {
    await file.chmod(plan.mode & MODE_MASK);
    if (plan.mtime) await file.utimes(plan.mtime, plan.mtime);
  }

  async symlink(plan: Extract<EntryPlan, { kind: 'symlink' }>): Promise<void> {
    await this.#fs(plan, () => symlink(plan.target, this.#path(plan)));
  }

  #tooMany(plan: EntryPlan): BatonError {
    return refusal(
      'ARCHIVE_TOO_MANY_FILES',
      plan.name,
      `would make more than ${this.#maxFiles} files and directories in the release`,
    );
  }

  #path(plan: EntryPlan): string {
    return path.join(this.#root, ...plan.parts);
  }

  /** File system refusals the archive caused become archive errors naming the entry. */
  async #fs<T>(plan: EntryPlan, op: () => Promise<T>): Promise<T> {
    try {
      return await op();
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ELOOP')
        throw refusal('ARCHIVE_LINK_ESCAPE', plan.name, 'would be written through a symlink');
      if (
        code === 'EEXIST' ||
        code === 'ENOTDIR' ||
        code === 'EISDIR' ||
        code === 'ENAMETOOLONG' ||
        code === 'EINVAL'
      )
        throw refusal(
          'ARCHIVE_CORRUPT',
          plan.name,
          `could not be created (${code}): it clashes with another entry or is not a valid name here`,
        );
      throw err;
    }
  }
}
