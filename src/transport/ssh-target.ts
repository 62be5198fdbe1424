import os from 'node:os';
import { BatonError } from '../errors.js';

/** Where to log in: `parseSshTarget` fills in the defaults. */
export interface SshTarget {
  username: string;
  host: string;
  port: number;
}

/**
 * Reads `user@host[:port]` (also `host`, `[::1]:2222`, `user@[::1]`, a bare IPv6 address).
 * The user defaults to the current OS user and the port to 22, as with `ssh`.
 * @throws BatonError `USAGE` when the text is not such a target.
 */
export function parseSshTarget(text: string): SshTarget {
  const usage = (why: string) =>
    new BatonError(
      'USAGE',
      `SSH target "${text}" ${why}: expected user@host[:port], such as ` +
        'deploy@example.com:2222 or deploy@[::1]:2222',
    );
  const at = text.lastIndexOf('@');
  const username = at === -1 ? currentUser() : text.slice(0, at);
  const rest = text.slice(at + 1);
  if (username === '' || /[\s:@/]/.test(username)) throw usage('has no valid user name');
  let host = rest;
  let port: string | undefined;
  const bracketed = /^\[([^\]]*)\](?::(.*))?$/.exec(rest);
  if (bracketed) [, host = '', port] = bracketed;
  // More than one colon and no brackets is a bare IPv6 address: its colons are not a port.
  else if (rest.split(':').length === 2) [host = '', port] = rest.split(':');
  if (host === '' || /[\s/@[\]]/.test(host)) throw usage('has no valid host');
  if (port === undefined) return { username, host, port: 22 };
  if (!/^\d{1,5}$/.test(port) || Number(port) < 1 || Number(port) > 65535)
    throw usage(`has port "${port}", not a number from 1 to 65535`);
  return { username, host, port: Number(port) };
}

function currentUser(): string {
  try {
    return os.userInfo().username;
  } catch {
    const user = process.env.USER ?? process.env.LOGNAME;
    if (user) return user;
    throw new BatonError('USAGE', 'no SSH user given and the OS user is unknown: use user@host');
  }
}
