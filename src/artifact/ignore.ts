import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { BatonError } from '../errors.js';

/** Never packed: version control metadata is not part of a release. */
export const DEFAULT_IGNORE: readonly string[] = ['.git'];
/** One pattern per line at the packed directory's root; `#` starts a comment. */
export const IGNORE_FILE = '.batonignore';

const GLOB: Record<string, string> = { '**/': '(?:.*/)?', '**': '.*', '*': '[^/]*', '?': '[^/]' };

export interface IgnoreRule {
  regex: RegExp;
  /** Matches the path from the root; otherwise any entry's own name. */
  anchored: boolean;
  dirOnly: boolean;
}

async function readIgnoreFile(root: string): Promise<string[]> {
  let text: string;
  try {
    text = await readFile(path.join(root, IGNORE_FILE), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  return text.split(/\r?\n/).map((line, i) => {
    if (line.trim().startsWith('!'))
      throw new BatonError(
        'APP_CONFIG_INVALID',
        `${path.join(root, IGNORE_FILE)}:${i + 1}: negated patterns ("!") are not supported`,
      );
    return line;
  });
}

/**
 * gitignore-like, simplified: `name` or `*.ext` match an entry's own name at any depth; a pattern
 * with a `/` inside matches the path from the root; a trailing `/` matches directories only; `*`
 * and `?` stay within one name, `**` spans zero or more directories. Blank lines and `#` comments
 * are skipped.
 */
function compilePattern(raw: string): IgnoreRule[] {
  let p = raw.trim();
  if (p === '' || p.startsWith('#')) return [];
  const dirOnly = p.endsWith('/');
  p = p.replace(/\/+$/, '');
  const anchored = p.includes('/');
  p = p.replace(/^\/+/, '');
  if (p === '') return [];
  const source = p
    .split(/(\*\*\/|\*\*|\*|\?)/)
    .map((part) => GLOB[part] ?? part.replace(/[.+^${}()|[\]\\]/g, '\\$&'))
    .join('');
  return [{ regex: new RegExp(`^${source}$`), anchored, dirOnly }];
}

export function ignored(rules: readonly IgnoreRule[], rel: string, isDir: boolean): boolean {
  const name = rel.slice(rel.lastIndexOf('/') + 1);
  return rules.some((r) => (!r.dirOnly || isDir) && r.regex.test(r.anchored ? rel : name));
}

/** The rules for packing `root`: the defaults, the caller's, and the root's `.batonignore`. */
export async function loadIgnoreRules(
  root: string,
  extra: readonly string[],
): Promise<IgnoreRule[]> {
  return [...DEFAULT_IGNORE, ...extra, ...(await readIgnoreFile(root))].flatMap(compilePattern);
}
