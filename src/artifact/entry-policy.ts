import type { ReadEntry } from 'tar';
import { BatonError, type ErrorCode } from '../errors.js';

/**
 * What one archive entry may become, decided from its header alone, before anything is written
 * for it. Only regular files, directories and symlinks pass; `parts` is the entry's path inside
 * the release, already free of `.`, `..`, empty and absolute components.
 */
export type EntryPlan =
  | { kind: 'file'; name: string; parts: string[]; mode: number; size: number; mtime?: Date }
  | { kind: 'directory'; name: string; parts: string[]; mode: number }
  | { kind: 'symlink'; name: string; parts: string[]; target: string };

/** An entry name as it appears in a one-line message: quoted, control characters escaped. */
export function quote(name: string | undefined): string {
  const q = JSON.stringify(name ?? '');
  return q.length > 160 ? `${q.slice(0, 150)}…"` : q;
}

export function refusal(code: ErrorCode, name: string | undefined, why: string): BatonError {
  return new BatonError(code, `archive entry ${quote(name)} ${why}`);
}

const FILE_TYPES: ReadonlySet<string> = new Set(['File', 'OldFile', 'ContiguousFile']);
const TYPE_NAMES: Partial<Record<string, string>> = {
  CharacterDevice: 'a character device',
  BlockDevice: 'a block device',
  FIFO: 'a FIFO',
  SparseFile: 'a sparse file',
  GNUDumpDir: 'a GNU dump directory',
  Unsupported: 'an entry of a type tar does not define',
};
/** Linux's PATH_MAX; also keeps the per-entry work linear in something small. */
const MAX_PATH_LENGTH = 4096;
const SETUID_BITS = 0o7000;
const PERMISSION_BITS = 0o7777;

/**
 * Checks one entry. Every value comes from the parsed header (`entry.header`), where a local PAX
 * header wins over a global one as POSIX says. node-tar's `ReadEntry`, which its own extractor
 * reads, copies the global one over the local one instead (size, linkpath), so wherever the two
 * readings disagree on a value used here the archive is refused rather than read one way.
 */
export function planEntry(entry: ReadEntry): EntryPlan {
  const header = entry.header;
  const name = header.path ?? entry.path;
  const parts = pathParts(name);
  const type = header.type;

  if (type === 'Link')
    throw refusal(
      'ARCHIVE_HARDLINK',
      name,
      `is a hard link to ${quote(header.linkpath)}; release archives may not hold hard links (archive the file itself)`,
    );
  if (!FILE_TYPES.has(type) && type !== 'Directory' && type !== 'SymbolicLink')
    throw refusal(
      'ARCHIVE_SPECIAL_FILE',
      name,
      `is ${TYPE_NAMES[type] ?? `a ${type} entry`}; releases hold only regular files, directories and symlinks`,
    );
  if (entry.type !== type || entry.path !== name)
    throw refusal(
      'ARCHIVE_CORRUPT',
      name,
      'has extended headers that disagree about its type or path; rebuild the archive',
    );

  const modeValue = mode(name, header.mode, entry.mode);
  const size = header.size ?? 0;
  if (!Number.isSafeInteger(size) || entry.size !== size)
    throw refusal(
      'ARCHIVE_CORRUPT',
      name,
      'has headers that disagree about its size; rebuild the archive',
    );

  if (type === 'SymbolicLink') {
    // Validate both readings before comparing them, so a smuggled target reports as what it is.
    const target = linkTarget(name, parts, header.linkpath);
    if (entry.linkpath !== undefined) linkTarget(name, parts, entry.linkpath);
    if (entry.linkpath !== target)
      throw refusal(
        'ARCHIVE_CORRUPT',
        name,
        'has extended headers that disagree about its link target',
      );
    if (size !== 0) throw bodyOnNonFile(name, 'symlink', size);
    if (parts.length === 0) throw rootNotDirectory(name);
    return { kind: 'symlink', name, parts, target };
  }
  if (entry.linkpath !== undefined)
    throw refusal('ARCHIVE_CORRUPT', name, 'carries a link target but is not a link');
  if (type === 'Directory') {
    if (size !== 0) throw bodyOnNonFile(name, 'directory', size);
    return { kind: 'directory', name, parts, mode: modeValue ?? 0o755 };
  }
  if (parts.length === 0) throw rootNotDirectory(name);
  const mtime = header.mtime && Number.isFinite(header.mtime.getTime()) ? header.mtime : undefined;
  return { kind: 'file', name, parts, mode: modeValue ?? 0o644, size, mtime };
}

/**
 * Splits an entry path into plain components. Every `..` is refused, not only one that climbs
 * out on paper: a `..` after a component that is a symlink resolves from the link's target, so
 * lexical reasoning about it is only sound if nothing before it is a link, and no packer writes
 * them anyway.
 */
export function pathParts(name: string): string[] {
  if (isAbsolute(name))
    throw refusal(
      'ARCHIVE_ABSOLUTE_PATH',
      name,
      'is an absolute path; release archives hold paths relative to the release root',
    );
  if (name.length > MAX_PATH_LENGTH)
    throw refusal(
      'ARCHIVE_CORRUPT',
      name,
      `has a path of ${name.length} characters, longer than any file system takes (${MAX_PATH_LENGTH})`,
    );
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..'))
    throw refusal(
      'ARCHIVE_PATH_ESCAPE',
      name,
      "has a '..' component, which could climb out of the release; archive from inside the release directory",
    );
  return parts;
}

/**
 * A symlink target may only climb with leading `..` (resolved from the link's own directory,
 * which is always a real directory: nothing is ever written through a link) and must not climb
 * past the release root; after the first name it may only descend. Descending stays inside by
 * induction: every link it can meet passed this same rule. A `..` after a name could step
 * through a link to the root (`self -> .`, then `up -> self/..`) and out, so it is refused.
 */
export function linkTarget(name: string, parts: string[], target: string | undefined): string {
  if (!target) throw refusal('ARCHIVE_CORRUPT', name, 'is a symlink without a target');
  if (isAbsolute(target))
    throw refusal(
      'ARCHIVE_LINK_ESCAPE',
      name,
      `is a symlink to the absolute path ${quote(target)}; links must point inside the release`,
    );
  let depth = parts.length - 1;
  let named = false;
  for (const part of target.split('/')) {
    if (part === '' || part === '.') continue;
    if (part !== '..') named = true;
    else if (named)
      throw refusal(
        'ARCHIVE_LINK_ESCAPE',
        name,
        `is a symlink to ${quote(target)}, with a '..' after a name that could climb out through another link`,
      );
    else if (--depth < 0)
      throw refusal(
        'ARCHIVE_LINK_ESCAPE',
        name,
        `is a symlink to ${quote(target)}, which points outside the release`,
      );
  }
  return target;
}

/** Refuses special bits in either reading of the mode; returns the permission bits, if any. */
function mode(name: string, ...readings: (number | undefined)[]): number | undefined {
  let special = 0;
  for (const m of readings) {
    if (m === undefined) continue;
    if (!Number.isSafeInteger(m) || m < 0)
      throw refusal('ARCHIVE_CORRUPT', name, 'has an unreadable mode');
    special |= (m % (PERMISSION_BITS + 1)) & SETUID_BITS;
  }
  if (special !== 0)
    throw refusal(
      'ARCHIVE_SETUID',
      name,
      `has setuid, setgid or sticky bits (0o${special.toString(8)}); release files may not carry them`,
    );
  const m = readings[0];
  return m === undefined ? undefined : m % (PERMISSION_BITS + 1);
}

/** Also refuses Windows drive and UNC forms: meaningless on POSIX, dangerous anywhere else. */
function isAbsolute(p: string): boolean {
  return p.startsWith('/') || p.startsWith('\\') || /^[A-Za-z]:/.test(p);
}

function bodyOnNonFile(name: string, kind: string, size: number): BatonError {
  return refusal('ARCHIVE_CORRUPT', name, `is a ${kind} but carries ${size} bytes of data`);
}

function rootNotDirectory(name: string): BatonError {
  return refusal(
    'ARCHIVE_PATH_ESCAPE',
    name,
    'names the release root itself but is not a directory',
  );
}
