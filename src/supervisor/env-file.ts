import { open, type FileHandle } from 'node:fs/promises';
import { BatonError, errorMessage } from '../errors.js';

/** Largest environment file read: far beyond any real one, small enough to hold in memory. */
export const MAX_ENV_FILE_BYTES = 1024 * 1024;

const KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;
// As systemd reads these files: "\r" ends a line like "\n" does.
const NEWLINE = '\n\r';
const WHITESPACE = ' \t\n\r';
// Inside double quotes a backslash escapes only these, as in the shell; before anything else it stays.
const DOUBLE_QUOTE_ESCAPES = '"\\`$';

type State = 'key' | 'preValue' | 'value' | 'single' | 'double';

/**
 * Parses systemd's `EnvironmentFile=` syntax, as systemd (v254 and later) does: `KEY=VALUE` lines;
 * blank lines and lines starting with `#` or `;` ignored; whitespace around the key and around an
 * unquoted value trimmed; `'…'` literal; `"…"` with `\"`, `\\`, `` \` ``, `\$` and
 * backslash-newline (other backslashes kept, so `"\n"` is a backslash and an n, as systemd
 * passes it); outside quotes a backslash takes the next character literally and backslash-newline
 * continues the line. Quoted parts may span lines and join what follows them (`"a" "b"` is `ab`).
 *
 * Unlike systemd, which skips them, a line without `=`, an invalid name and an unterminated quote
 * are errors. Errors name `source`, the line and (when valid) the key, never a value.
 */
export function parseEnvFile(text: string, source: string): Record<string, string> {
  const env: Record<string, string> = {};
  const fail = (line: number, what: string): never => {
    throw new BatonError(
      'ENV_FILE_INVALID',
      `${source}:${line}: ${what}; write one KEY=value per line (systemd's EnvironmentFile= syntax)`,
    );
  };
  if (text.includes('\0')) fail(text.slice(0, text.indexOf('\0')).split('\n').length, 'NUL byte');

  let state: State | 'preKey' | 'comment' = 'preKey';
  let line = 1;
  let keyLine = 1;
  let key = '';
  let value = '';
  // Length of `value` before its trailing run of unquoted whitespace, trimmed at the end.
  let trimTo = -1;
  let quoteLine = 1;

  const push = (): void => {
    key = key.trimEnd();
    if (!KEY.test(key))
      fail(
        keyLine,
        'the name before "=" is not a valid variable name (letters, digits and _, not starting with a digit)',
      );
    env[key] = trimTo >= 0 ? value.slice(0, trimTo) : value;
    key = '';
    value = '';
    trimTo = -1;
  };

  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === '\n') line++;
    switch (state) {
      case 'preKey':
        if (c === '#' || c === ';') state = 'comment';
        else if (!WHITESPACE.includes(c)) {
          state = 'key';
          key = c;
          keyLine = line;
        }
        break;
      case 'comment':
        if (NEWLINE.includes(c)) state = 'preKey';
        break;
      case 'key':
        if (NEWLINE.includes(c)) fail(keyLine, 'line has no "="');
        else if (c === '=') state = 'preValue';
        else key += c;
        break;
      case 'preValue':
      case 'value':
        if (NEWLINE.includes(c)) {
          push();
          state = 'preKey';
        } else if (c === '\\') {
          const next = text[i + 1];
          if (next === undefined) break;
          i++;
          if (next === '\n') line++;
          // An escaped newline joins the lines; anything else escaped is taken as it is.
          if (!NEWLINE.includes(next)) value += next;
          trimTo = -1;
          state = 'value';
        } else if (state === 'preValue' && (c === "'" || c === '"')) {
          state = c === "'" ? 'single' : 'double';
          quoteLine = line;
        } else if (state === 'value') {
          if (!WHITESPACE.includes(c)) trimTo = -1;
          else if (trimTo < 0) trimTo = value.length;
          value += c;
        } else if (!WHITESPACE.includes(c)) {
          state = 'value';
          value += c;
        }
        break;
      case 'single':
        if (c === "'") state = 'preValue';
        else value += c;
        break;
      case 'double':
        if (c === '"') state = 'preValue';
        else if (c === '\\') {
          const next = text[i + 1];
          if (next === undefined) break;
          i++;
          if (next === '\n') line++;
          else if (DOUBLE_QUOTE_ESCAPES.includes(next)) value += next;
          else value += `\\${next}`;
        } else value += c;
        break;
    }
  }
  if (state === 'single' || state === 'double')
    fail(
      quoteLine,
      `unterminated ${state}-quoted value for ${KEY.test(key.trimEnd()) ? key.trimEnd() : 'a variable'}`,
    );
  if (state === 'key') fail(keyLine, 'line has no "="');
  if (state === 'preValue' || state === 'value') push();
  return env;
}

/**
 * Reads and parses an app's environment file. It may hold secrets: it must be a regular file
 * that neither group nor others can write (readable is their business), at most 1 MiB.
 */
export async function readEnvFile(file: string): Promise<Record<string, string>> {
  let text: string;
  let handle: FileHandle;
  try {
    handle = await open(file, 'r');
  } catch (err) {
    throw unreadable(file, errorMessage(err));
  }
  try {
    // fstat of the open file, so the checks hold for what is read.
    const stat = await handle.stat();
    if (!stat.isFile()) throw unreadable(file, 'not a regular file');
    if (stat.mode & 0o022)
      throw new BatonError(
        'ENV_FILE_INVALID',
        `env file ${file} is writable by ${stat.mode & 0o002 ? 'others' : 'its group'}: anyone who can write it chooses the app's environment; chmod 600 or 640 it`,
      );
    const buffer = Buffer.alloc(MAX_ENV_FILE_BYTES + 1);
    let length = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buffer, length, buffer.length - length, null);
      if (bytesRead === 0) break;
      length += bytesRead;
      if (length > MAX_ENV_FILE_BYTES)
        throw new BatonError(
          'ENV_FILE_INVALID',
          `env file ${file} is larger than ${MAX_ENV_FILE_BYTES} bytes: it is meant for KEY=value lines, not data`,
        );
    }
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(buffer.subarray(0, length));
    } catch {
      throw new BatonError('ENV_FILE_INVALID', `env file ${file} is not valid UTF-8`);
    }
  } catch (err) {
    if (err instanceof BatonError) throw err;
    throw unreadable(file, errorMessage(err));
  } finally {
    await handle.close();
  }
  return parseEnvFile(text, file);
}

function unreadable(file: string, reason: string): BatonError {
  return new BatonError(
    'ENV_FILE_UNREADABLE',
    `cannot read env file ${file}: ${reason}; create it on this host (chmod 600, owned by root or the agent's user) or fix the app's "envFile"`,
  );
}

/** Control characters made spaces, so a line cannot forge others (a STATUS= in the stream). */
export function withoutControls(text: string): string {
  let out = '';
  for (const ch of text) {
    const code = ch.codePointAt(0)!;
    out += code < 0x20 || code === 0x7f ? ' ' : ch;
  }
  return out;
}

/** A line of a multi-line secret masked on its own: 16 or more characters of base64 or hex. */
const SECRET_LINE = /^[A-Za-z0-9+/=_-]{16,}$/;
/** At most this many lines per secret: a certificate bundle must not slow every log line. */
const MAX_SECRET_LINES = 256;

/** Masks secret values in text meant for people: events, log lines, errors. */
export class SecretMasker {
  private readonly secrets: string[];

  constructor(secrets: Iterable<string>) {
    const forms: string[] = [];
    for (const secret of secrets) {
      forms.push(secret);
      // As it shows where control characters are made spaces (a STATUS= line)...
      forms.push(withoutControls(secret));
      // ...and line by line, since output is masked a line at a time: the body lines of a PEM
      // key, say. Only lines that look like key material: short lines, PEM armour or a JSON
      // line like "type": "service_account" would mask ordinary text and give away little.
      const lines = secret.split(/\r?\n/);
      if (lines.length > 1)
        forms.push(...lines.filter((l) => SECRET_LINE.test(l.trim())).slice(0, MAX_SECRET_LINES));
    }
    // Longest first, so where one secret contains another the longer one is found too.
    this.secrets = [...new Set(forms)].filter((s) => s !== '').sort((a, b) => b.length - a.length);
  }

  get active(): boolean {
    return this.secrets.length > 0;
  }

  /** The length of the longest form of any secret (0 when there is none). */
  get longest(): number {
    return this.secrets[0]?.length ?? 0;
  }

  /**
   * Where to cut `text` near `at` so that no occurrence of a secret is cut in two: `at` itself,
   * or the start of the run of occurrences around it; when that run starts the text, its end.
   */
  safeCut(text: string, at: number): number {
    for (const [start, end] of this.runs(text)) {
      if (start >= at) break;
      if (end > at) return start > 0 ? start : end;
    }
    return at;
  }

  /**
   * Every occurrence of every secret becomes `***`. Overlapping occurrences (of one secret or of
   * two) are masked as one run, so no part of either shows.
   */
  mask(text: string): string {
    const runs = this.runs(text);
    if (runs.length === 0) return text;
    let out = '';
    let done = 0;
    for (const [start, end] of runs) {
      out += `${text.slice(done, start)}***`;
      done = end;
    }
    return out + text.slice(done);
  }

  /** Every occurrence of every secret, overlapping ones merged into one run, in order. */
  private runs(text: string): [number, number][] {
    if (this.secrets.length === 0) return [];
    const found: [number, number][] = [];
    for (const secret of this.secrets) {
      for (let at = text.indexOf(secret); at >= 0; at = text.indexOf(secret, at + 1))
        found.push([at, at + secret.length]);
    }
    found.sort((a, b) => a[0] - b[0]);
    const merged: [number, number][] = [];
    for (const [s, e] of found) {
      const last = merged.at(-1);
      if (last && s <= last[1]) last[1] = Math.max(last[1], e);
      else merged.push([s, e]);
    }
    return merged;
  }
}

/** The values of `secretKeys` in any of `envs`, to build a SecretMasker from. */
export function secretValues(
  secretKeys: readonly string[],
  ...envs: Record<string, string>[]
): string[] {
  const values = new Set<string>();
  for (const env of envs)
    for (const key of secretKeys) {
      const value = env[key];
      if (value !== undefined && value !== '') values.add(value);
    }
  return [...values];
}
