import { closeSync, constants, openSync, readFileSync, readSync } from 'node:fs';
import { access, readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { BatonError } from '../errors.js';

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Signals a whole process group; a group already gone is not an error. */
export function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

/** A scan of /proc (synchronous reads, below) lets the event loop run after this many entries. */
const SCAN_BATCH = 256;

/**
 * Awaited at each entry `i` of a scan of /proc: now and then it lets the event loop run, so
 * that a host with thousands of processes does not hold it up (a watchdog ping waiting to be
 * read) for the whole scan.
 */
export async function scanPause(i: number): Promise<void> {
  if (i % SCAN_BATCH === SCAN_BATCH - 1) await new Promise<void>((r) => setImmediate(r));
}

/** Holds one /proc/<pid>/stat: its fields are numbers and a 16-byte name, under 1 KiB. */
const STAT_BUFFER = Buffer.alloc(4096);

/**
 * Fields of /proc/<pid>/stat after the command name (field 3, the state, is index 0). Read
 * synchronously: the kernel fills it without waiting on the process (unlike its environ or
 * cmdline), and a scan of every process is a few syscalls each this way against ~0.5 ms of
 * CPU each through the promise API, which took tens of ms from the apps on a busy host.
 */
function statFields(pid: number): string[] | undefined {
  let stat: string;
  try {
    const fd = openSync(`/proc/${pid}/stat`, 'r');
    try {
      stat = STAT_BUFFER.toString('utf8', 0, readSync(fd, STAT_BUFFER, 0, STAT_BUFFER.length, 0));
    } finally {
      closeSync(fd);
    }
  } catch {
    return undefined;
  }
  // Field 2 (comm) may hold spaces and parentheses: count from the last ')'.
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

/** Resident memory, in bytes, of every process in the given process groups. */
export async function groupsResidentBytes(pgids: ReadonlySet<number>): Promise<number> {
  const entries = await readdir('/proc').catch(() => [] as string[]);
  let total = 0;
  for (const [i, name] of entries.entries()) {
    if (!/^\d+$/.test(name)) continue;
    await scanPause(i);
    const fields = statFields(Number(name));
    if (!fields || !pgids.has(Number(fields[2]))) continue;
    // VmRSS in kB: unlike stat's rss, it does not depend on the page size.
    const status = await readFile(`/proc/${name}/status`, 'utf8').catch(() => '');
    total += Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? 0) * 1024;
  }
  return total;
}

let bootTime: number | undefined | null = null;

/** The boot time in ms since the epoch, from /proc/stat's btime; read once. */
function bootTimeMs(): number | undefined {
  if (bootTime === null) {
    try {
      // Read to its end: btime comes after a line per CPU and the interrupt counts.
      const text = readFileSync('/proc/stat', 'utf8');
      bootTime = Number(/^btime (\d+)$/m.exec(text)?.[1]) * 1000 || undefined;
    } catch {
      bootTime = undefined;
    }
  }
  return bootTime;
}

/**
 * One read of /proc/<pid>/stat: its parent, its process group, whether it is a zombie (exited
 * but not reaped: its new parent, after the agent that started it died, may never reap it, and
 * it still answers kill(pid, 0)), and when it started: in clock ticks since boot, to tell a pid
 * we recorded from an unrelated process that reused it, and in ms since the epoch to within a
 * second or so (USER_HZ being 100 a second on Linux, after the boot time in /proc/stat).
 * Undefined once it is gone, or where /proc is not there.
 */
export function processInfo(pid: number):
  | {
      ppid: number;
      pgid: number;
      zombie: boolean;
      startTicks: number | undefined;
      startedAtMs: number | undefined;
    }
  | undefined {
  const fields = statFields(pid);
  if (!fields) return undefined;
  const boot = bootTimeMs();
  const ticks = Number(fields[19]);
  const startTicks = Number.isFinite(ticks) ? ticks : undefined;
  return {
    ppid: Number(fields[1]),
    pgid: Number(fields[2]),
    zombie: fields[0] === 'Z',
    startTicks,
    startedAtMs:
      boot === undefined || startTicks === undefined ? undefined : boot + startTicks * 10,
  };
}

/** Resolves a command the way execvp would, relative to `cwd` when it has a slash. */
export async function resolveCommand(
  command: string,
  cwd: string,
  envPath: string | undefined,
): Promise<string> {
  const candidates = command.includes('/')
    ? [path.resolve(cwd, command)]
    : (envPath ?? '/usr/local/bin:/usr/bin:/bin')
        .split(':')
        .filter(Boolean)
        .map((dir) => path.join(dir, command));
  for (const file of candidates) {
    try {
      await access(file, constants.X_OK);
      return file;
    } catch {
      // try the next one
    }
  }
  throw new BatonError(
    'COMMAND_NOT_FOUND',
    command.includes('/')
      ? `command "${command}" not found or not executable in ${cwd}; check the app's "command" and that the release contains it`
      : `command "${command}" not found on PATH; install it on the host or give its full path in the app's "command"`,
  );
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** PATH for apps and hooks when the agent has none (systemd's default for services). */
const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** Locale and time zone: how an app formats text and dates, no secret in them. */
const PASSED_BY_DEFAULT = /^(LANG|LANGUAGE|LC_[A-Z_]+|TZ)$/;

/** Who the process is: passed on when the app runs as the agent's own user (no switch). */
const ACCOUNT = ['HOME', 'USER', 'LOGNAME', 'SHELL'];

/**
 * What apps and hooks start from, as systemd starts a service: PATH, the locale and time zone,
 * the account variables when they run as the agent's own user (a switch to another user sets
 * that user's), and the variables the app's config names in `passEnv`; nothing else of the
 * agent's own environment (which may hold root's credentials). The app's `env`, env file and
 * the baton variables are added on top by the caller.
 */
export function childBaseEnv(
  passEnv: readonly string[],
  opts: { switchesUser: boolean },
): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH || DEFAULT_PATH };
  for (const [key, value] of Object.entries(process.env)) {
    if (value === undefined) continue;
    if (
      PASSED_BY_DEFAULT.test(key) ||
      (!opts.switchesUser && ACCOUNT.includes(key)) ||
      passEnv.includes(key)
    )
      env[key] = value;
  }
  return env;
}
