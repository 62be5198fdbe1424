import { z } from 'zod';
import { ACTIVATION_ENV } from './systemd.js';

/**
 * An app as the agent runs it: its command, listeners, readiness, drain, hooks, user, environment,
 * shared paths and limits. The agent's config lists apps in this shape, and a release's
 * `baton.yml` overrides a part of it, so both sides read it from here.
 */

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/** `host:port`, `[v6]:port` or a bare port; the host defaults to 127.0.0.1 so nothing listens beyond loopback by accident. */
const TcpAddressSchema = z.string().transform((value, ctx) => {
  // The colon is required whenever a host is given, so a host never swallows the port's digits.
  const match = /^(?:(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]]*)):)?(\d{1,5})$/.exec(value);
  const port = match ? Number(match[3]) : NaN;
  if (!match || port > 65535) {
    ctx.addIssue({
      code: 'custom',
      message: `"${value}" is not a TCP address: use host:port, [ipv6]:port or a port number`,
    });
    return z.NEVER;
  }
  const host = match[1] || match[2] || '127.0.0.1';
  return { host, port, family: match[1] !== undefined ? (6 as const) : (4 as const) };
});

export const ListenerSchema = z
  .object({
    /** Name the app finds the socket by (`LISTEN_FDNAMES`). */
    name: z.string().regex(NAME, 'use letters, digits, _ . - (at most 64)'),
    /** TCP address to bind, e.g. `127.0.0.1:8080` or `[::1]:8080`. */
    tcp: TcpAddressSchema.optional(),
    /** Path of a Unix stream socket to bind. */
    unix: z.string().min(1).optional(),
    /** Listen backlog: connections that queue in the kernel while no generation accepts. */
    backlog: z.number().int().min(1).max(65535).default(511),
  })
  .strict()
  .refine((l) => (l.tcp === undefined) !== (l.unix === undefined), {
    message: 'a listener takes exactly one of "tcp" or "unix"',
  });
export type ListenerConfig = z.infer<typeof ListenerSchema>;

/** The longest wait a Node timer can hold (2^31 - 1 ms, about 24.8 days); longer fires at once. */
export const MAX_TIMER_MS = 2 ** 31 - 1;
/** A duration in milliseconds: a positive whole number a timer can wait. */
function durationMs() {
  return z.number().int().positive().max(MAX_TIMER_MS, 'at most 2147483647 ms (about 24.8 days)');
}

const HookSchema = z.union([
  z
    .string()
    .min(1)
    .transform((run) => ({ run, timeoutMs: 60_000 })),
  z
    .object({
      /** Shell command, run with /bin/sh -c in the release directory. */
      run: z.string().min(1),
      /** Killed, and counted as failed, after this long. */
      timeoutMs: durationMs().default(60_000),
    })
    .strict(),
]);
export type HookConfig = z.infer<typeof HookSchema>;

export const ReadinessSchema = z.discriminatedUnion('type', [
  z
    .object({
      /** The app writes `READY=1\n` to the fd named in `BATON_NOTIFY_FD`. */
      type: z.literal('notify'),
      timeoutMs: durationMs().default(30_000),
    })
    .strict(),
  z
    .object({
      /** The agent GETs this path on `127.0.0.1:$BATON_HEALTH_PORT`, a port private to the generation. */
      type: z.literal('http'),
      path: z.string().startsWith('/').default('/healthz'),
      intervalMs: durationMs().default(100),
      timeoutMs: durationMs().default(30_000),
    })
    .strict(),
  z
    .object({
      /**
       * systemd's protocol, unchanged: the app sends `READY=1` (and `STATUS=`, `WATCHDOG=1`,
       * `MAINPID=`, `EXTEND_TIMEOUT_USEC=` …) as datagrams to `$NOTIFY_SOCKET`, a socket private
       * to the generation. Needs the optional package node-unix-socket.
       */
      type: z.literal('systemd'),
      timeoutMs: durationMs().default(30_000),
      /**
       * Like `WatchdogSec=`: the app gets `WATCHDOG_USEC` and must send `WATCHDOG=1` at least this
       * often once ready; a generation that stops is restarted like a crash, listeners kept.
       */
      watchdogMs: durationMs().optional(),
    })
    .strict(),
  z
    .object({
      /** Ready after a fixed delay, if the process is still alive. The weakest check. */
      type: z.literal('delay'),
      ms: z.number().int().nonnegative().max(MAX_TIMER_MS).default(1000),
    })
    .strict(),
]);
export type ReadinessConfig = z.infer<typeof ReadinessSchema>;

/** A user or group: a name as in /etc/passwd, or a number. */
const ACCOUNT = /^(?:[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?|\d{1,10})$/;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * A path inside the app's shared area, linked into every release at the same place: relative,
 * no `..`, no `.`, nothing empty. Symlinks on the way are checked against the disk when the
 * agent starts and before every link.
 */
const SharedPathSchema = z
  .string()
  .min(1)
  .max(1024)
  .refine((p) => !p.startsWith('/'), {
    message: 'a shared path is relative to the release (e.g. "storage/uploads"), not absolute',
  })
  .refine(
    (p) =>
      p
        .replace(/\/+$/, '')
        .split('/')
        .every((part) => part !== '' && part !== '.' && part !== '..'),
    {
      message:
        'a shared path may not contain "..", "." or empty parts: it must stay in the app\'s shared area',
    },
  )
  .transform((p) => p.replace(/\/+$/, ''));

const SIGNALS = [
  'SIGTERM',
  'SIGINT',
  'SIGQUIT',
  'SIGHUP',
  'SIGUSR1',
  'SIGUSR2',
  'SIGWINCH',
] as const;

export const AppSchema = z
  .object({
    /** The app's name: state, logs and commands refer to it. */
    name: z.string().regex(NAME, 'use letters, digits, _ . - (at most 64)'),
    /** Program and arguments, run without a shell in the release directory. */
    command: z.array(z.string().min(1)).min(1),
    /** Release directory to start from when the agent has no current release for the app yet. */
    release: z.string().min(1).optional(),
    /** Id of that release; defaults to the directory's name. */
    releaseId: z.string().regex(NAME).optional(),
    listeners: z.array(ListenerSchema).min(1),
    readiness: ReadinessSchema.default({ type: 'notify', timeoutMs: 30_000 }),
    drain: z
      .object({
        /** Signal that asks a generation to drain and exit. */
        signal: z.enum(SIGNALS).default('SIGTERM'),
        /** SIGKILL after this long. */
        timeoutMs: durationMs().default(30_000),
      })
      .strict()
      .default({ signal: 'SIGTERM', timeoutMs: 30_000 }),
    restart: z
      .object({
        /** First delay before restarting a crashed generation; doubles each time up to `maxBackoffMs`. */
        initialBackoffMs: z.number().int().nonnegative().max(MAX_TIMER_MS).default(100),
        maxBackoffMs: durationMs().default(30_000),
        /** A generation that served this long resets the backoff. */
        resetAfterMs: durationMs().default(30_000),
      })
      .strict()
      .default({ initialBackoffMs: 100, maxBackoffMs: 30_000, resetAfterMs: 30_000 }),
    hooks: z
      .object({
        /** Before the app's first generation starts. */
        start: HookSchema.optional(),
        /** After the app's last generation stopped (agent stop). */
        stop: HookSchema.optional(),
        /** Before a new generation starts; failing aborts the restart, the old one keeps serving. */
        beforeRestart: HookSchema.optional(),
        /** After the old generation has drained. Failing is reported, nothing is undone. */
        afterRestart: HookSchema.optional(),
      })
      .strict()
      .default({}),
    /** Extra environment for the app and its hooks. */
    env: z
      .record(
        z.string().regex(ENV_NAME, 'an environment variable name (letters, digits, _)'),
        z.string(),
      )
      .default({}),
    /**
     * A file on this host (systemd's `EnvironmentFile=` syntax: KEY=value lines, # comments,
     * quotes) read at every start of a generation or hook, so secrets stay on the host.
     */
    envFile: z.string().min(1).optional(),
    /**
     * Variables of the agent's own environment passed on to the app and its hooks (systemd's
     * `PassEnvironment=`). Nothing else of it is: apps start from PATH, the locale (LANG, LC_*)
     * and TZ, plus `env`, `envFile` and the baton variables.
     */
    passEnv: z
      .array(
        z
          .string()
          .regex(ENV_NAME, 'an environment variable name')
          .refine(
            (name) => !ACTIVATION_ENV.includes(name) && !name.startsWith('BATON_'),
            "belongs to the agent's own activation or to baton, never passed on: the app gets its own",
          ),
      )
      .default([]),
    /** Keys (from `env` or `envFile`) whose values are masked in every event, log line and error. */
    secretEnv: z.array(z.string().regex(ENV_NAME, 'an environment variable name')).default([]),
    /** The user the app and its hooks run as (a name or uid). Required when the agent runs as root, unless `allowRoot`. */
    user: z.string().regex(ACCOUNT, 'a user name or uid').optional(),
    /** The app's group; the user's primary group when left out. */
    group: z.string().regex(ACCOUNT, 'a group name or gid').optional(),
    /** More groups for the app (systemd's `SupplementaryGroups=`). */
    supplementaryGroups: z.array(z.string().regex(ACCOUNT, 'a group name or gid')).default([]),
    /** File-creation mask for the app and its hooks, in octal (systemd's `UMask=`). */
    umask: z
      .string()
      .regex(/^0?[0-7]{3}$/, 'an octal mask such as "0027"')
      .default('0022')
      .transform((m) => parseInt(m, 8)),
    /** Run the app as root. Off unless said in as many words. */
    allowRoot: z.boolean().default(false),
    /**
     * Directories and files kept in the app's shared area (`<stateDir>/apps/<app>/shared`) and
     * linked into every release before its hooks run; created on first use, owned by the app's
     * user. Deploys, rollbacks and prunes never touch their contents.
     */
    shared: z
      .object({
        dirs: z.array(SharedPathSchema).default([]),
        files: z.array(SharedPathSchema).default([]),
      })
      .strict()
      .default({ dirs: [], files: [] }),
    /** Limits that hold without systemd; anything else belongs in a systemd unit (see docs/systemd.md). */
    limits: z
      .object({
        /** `LimitNOFILE=`: open files, set with the shell's ulimit before the app starts. */
        openFiles: z.number().int().positive().max(1_048_576).optional(),
        /** `LimitCORE=`: core dump size in bytes (0: none), set with the shell's ulimit. */
        coreBytes: z.number().int().nonnegative().optional(),
        /**
         * A memory ceiling the agent watches (resident memory of the generation's processes,
         * sampled every `memoryCheckMs`): a generation over it is restarted like a crash.
         */
        memoryBytes: z.number().int().positive().optional(),
        memoryCheckMs: durationMs().default(1000),
      })
      .strict()
      .default({ memoryCheckMs: 1000 }),
    /** Log lines kept per generation and per hook run. */
    logLines: z.number().int().positive().max(100_000).default(200),
    /** Releases kept on disk by the release store; current and previous are never pruned. */
    keepReleases: z.number().int().min(2).max(1000).default(5),
    /** Largest artifact accepted, in bytes. */
    maxArchiveBytes: z
      .number()
      .int()
      .positive()
      .default(2 * 1024 ** 3),
    /** Caps for unpacking an artifact: entries, unpacked bytes, compression ratio. */
    unpack: z
      .object({
        maxFiles: z.number().int().positive().optional(),
        maxBytes: z.number().int().positive().optional(),
        maxRatio: z.number().positive().optional(),
      })
      .strict()
      .default({}),
    /** A generation's log file is cut back once it grows past this. */
    maxLogBytes: z
      .number()
      .int()
      .positive()
      .default(10 * 1024 * 1024),
  })
  .strict();
export type AppConfig = z.infer<typeof AppSchema>;

/** Refuses a name given twice in `items` (apps, listeners), at the second one's `name` field. */
export function refuseDuplicateNames(
  items: readonly { name: string }[],
  what: string,
  pathOf: (index: number) => (string | number)[],
  ctx: z.RefinementCtx,
): void {
  const seen = new Set<string>();
  for (const [i, item] of items.entries()) {
    if (seen.has(item.name))
      ctx.addIssue({
        code: 'custom',
        path: pathOf(i),
        message: `duplicate ${what} "${item.name}"`,
      });
    seen.add(item.name);
  }
}
