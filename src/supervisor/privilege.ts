import { execFile } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { promisify } from 'node:util';
import { BatonError, errorMessage } from '../errors.js';
import type { AppConfig } from '../protocol/app-schema.js';

const execFileAsync = promisify(execFile);

/** The account an app's generations and hooks run as, resolved through NSS. */
export interface RunAs {
  /** Name from the user database, or the uid as a string when it has no entry. */
  user: string;
  uid: number;
  gid: number;
  /** Supplementary groups: the user's own (as `initgroups` sees them) and the app's `supplementaryGroups`. */
  groups: number[];
  /** From the user database; undefined for a bare uid. */
  home: string | undefined;
}

// uid_t and gid_t are 32 bits and (uid_t)-1 means "unchanged" to the kernel.
const MAX_ID = 0xfffffffe;
const NUMERIC = /^\d+$/;

interface Entry {
  name: string;
  id: number;
  /** passwd only: primary gid and home. */
  gid?: number;
  home?: string;
}

/** One `getent` lookup; undefined when the database has no such key (exit 2). */
async function getent(database: 'passwd' | 'group', key: string): Promise<Entry | undefined> {
  let stdout: string;
  try {
    ({ stdout } = await execFileAsync('getent', [database, key], { timeout: 10_000 }));
  } catch (err) {
    if ((err as { code?: unknown }).code === 2) return undefined;
    throw new BatonError(
      database === 'passwd' ? 'USER_UNKNOWN' : 'GROUP_UNKNOWN',
      `cannot look up ${database === 'passwd' ? 'user' : 'group'} "${key}" with getent: ${errorMessage(err)}; check that getent (libc-bin) is installed and NSS answers`,
    );
  }
  const fields = (stdout.split('\n')[0] ?? '').split(':');
  if (database === 'passwd')
    return {
      name: fields[0] ?? key,
      id: Number(fields[2]),
      gid: Number(fields[3]),
      home: fields[5] || undefined,
    };
  return { name: fields[0] ?? key, id: Number(fields[2]) };
}

/** The user's supplementary groups from the group database, as initgroups(3) would set them. */
async function initGroups(user: string): Promise<number[]> {
  try {
    const { stdout } = await execFileAsync('getent', ['initgroups', user], { timeout: 10_000 });
    return stdout.trim().split(/\s+/).slice(1).map(Number).filter(Number.isInteger);
  } catch {
    return [];
  }
}

function checkedId(app: string, field: string, value: string): number {
  const id = Number(value);
  if (id > MAX_ID)
    throw new BatonError(
      field === 'user' ? 'USER_UNKNOWN' : 'GROUP_UNKNOWN',
      `app ${app}: "${field}" ${value} is not a valid ${field === 'user' ? 'uid' : 'gid'} (at most ${MAX_ID})`,
    );
  return id;
}

/**
 * The gid of group `name` in the group database; undefined when it has no such group. Throws
 * GROUP_UNKNOWN when the database cannot be asked (no getent, NSS failing).
 */
export async function lookupGroup(name: string): Promise<number | undefined> {
  return (await getent('group', name))?.id;
}

async function resolveGroup(app: string, field: string, value: string): Promise<number> {
  const id = await lookupGroup(value);
  if (id !== undefined) return id;
  // Like systemd, a bare gid needs no entry in the group database.
  if (NUMERIC.test(value)) return checkedId(app, field, value);
  throw new BatonError(
    'GROUP_UNKNOWN',
    `app ${app}: group "${value}" (in "${field}") does not exist on this host: create it (groupadd --system ${value}) or fix "${field}"`,
  );
}

/**
 * Who an app's generations and hooks run as. undefined: as the agent's own user (the agent is
 * not root and the app names no other account). Throws one BatonError naming the app and the fix.
 */
export async function resolveRunAs(
  app: AppConfig,
  agentUid: number = process.getuid!(),
): Promise<RunAs | undefined> {
  const name = app.name;
  let user: Entry | undefined;
  if (app.user !== undefined) {
    user = await getent('passwd', app.user);
    if (user === undefined && !NUMERIC.test(app.user))
      throw new BatonError(
        'USER_UNKNOWN',
        `app ${name}: user "${app.user}" does not exist on this host: create it (useradd --system --no-create-home ${app.user}) or fix "user"`,
      );
    // Like systemd, a bare uid needs no entry in the user database; it then has no primary group.
    user ??= { name: app.user, id: checkedId(name, 'user', app.user) };
  }

  if (agentUid !== 0) return ownUser(app, user, agentUid);

  const uid = user?.id ?? 0;
  if (uid === 0 && !app.allowRoot)
    throw new BatonError(
      'RUN_AS_ROOT_REFUSED',
      `app ${name} would run as root: set "user" to an unprivileged account (e.g. useradd --system --no-create-home ${name}) or, if it must, "allowRoot: true"`,
    );
  user ??= (await getent('passwd', '0')) ?? { name: 'root', id: 0, gid: 0, home: '/root' };

  let gid: number;
  if (app.group !== undefined) gid = await resolveGroup(name, 'group', app.group);
  else if (user.gid !== undefined) gid = user.gid;
  else
    throw new BatonError(
      'GROUP_UNKNOWN',
      `app ${name}: uid ${user.id} has no entry in the user database, so no primary group: set "group"`,
    );

  const groups = new Set<number>();
  // systemd adds the user's own supplementary groups too, except for root (no NSS lookup for gid 0).
  if (user.gid !== undefined && gid !== 0)
    for (const g of await initGroups(user.name)) groups.add(g);
  for (const g of app.supplementaryGroups)
    groups.add(await resolveGroup(name, 'supplementaryGroups', g));
  groups.delete(gid);

  return { user: user.name, uid: user.id, gid, groups: [...groups], home: user.home };
}

/**
 * An agent that is not root cannot change uid or groups: the app runs as the agent, and may only
 * name what it already is.
 */
async function ownUser(
  app: AppConfig,
  user: Entry | undefined,
  agentUid: number,
): Promise<undefined> {
  const cannot = (what: string): BatonError =>
    new BatonError(
      'USER_SWITCH_DENIED',
      `app ${app.name}: ${what}, but the agent (uid ${agentUid}) cannot switch users: run the agent as root or remove "user", "group" and "supplementaryGroups"`,
    );
  if (user !== undefined && user.id !== agentUid) throw cannot(`"user" is uid ${user.id}`);
  if (app.group !== undefined) {
    const gid = await resolveGroup(app.name, 'group', app.group);
    if (gid !== process.getegid!()) throw cannot(`"group" is gid ${gid}`);
  }
  const own = new Set(process.getgroups!());
  for (const g of app.supplementaryGroups) {
    const gid = await resolveGroup(app.name, 'supplementaryGroups', g);
    if (!own.has(gid)) throw cannot(`"supplementaryGroups" has gid ${gid}`);
  }
  return undefined;
}

/** Single-quoted for /bin/sh: nothing inside is expanded. */
export function shellQuote(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`;
}

let setprivPath: string | undefined;

function setpriv(): string {
  if (setprivPath !== undefined) return setprivPath;
  for (const candidate of [
    '/usr/bin/setpriv',
    '/bin/setpriv',
    '/usr/sbin/setpriv',
    '/sbin/setpriv',
  ]) {
    try {
      accessSync(candidate, constants.X_OK);
      return (setprivPath = candidate);
    } catch {
      // try the next one
    }
  }
  throw new BatonError(
    'SETPRIV_MISSING',
    'setpriv not found: the agent needs it to start apps as their "user"; install util-linux (apt-get install util-linux, dnf install util-linux)',
  );
}

/** A statement that fails the launch with a message, not a silent start with the wrong limit. */
function ulimit(flag: string, value: number, what: string): string {
  const message = `baton: cannot set ${what}: above the hard limit, which only root may raise`;
  return `ulimit ${flag} ${value} || { echo ${shellQuote(message)} >&2; exit 126; }`;
}

/**
 * The variable that carries the app's own environment past the switch to its user. Before the
 * switch, `/bin/sh` and `setpriv` run as root: an `LD_PRELOAD` or `GCONV_PATH` from an env file
 * or a release's `baton.yml` would run code as root there. So they start with the agent's
 * environment only, and a shell running as the app's user sets the app's variables (shell-quoted
 * `export` statements in this one variable) just before it execs the app.
 */
export const LAUNCH_ENV = 'BATON_LAUNCH_ENV';
/**
 * Linux refuses a single environment string over 128 KiB (MAX_ARG_STRLEN): the statements are
 * spread over `BATON_LAUNCH_ENV_0`, `_1`, … each under this, their count in `BATON_LAUNCH_ENV`.
 */
const LAUNCH_ENV_CHUNK = 100 * 1024;
const SHELL_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** The app side's loop counter: a name no app variable may take. */
const LOOP = 'BATON_LAUNCH_I';
/** Set by the launch shell itself (to its own pid), after the app's environment. */
const SHELL_SET = new Set(['LISTEN_PID', 'WATCHDOG_PID']);

/**
 * The environment to spawn with: `base` (the agent's, and what the agent sets, which wins), and
 * the app's own `appEnv`: merged in directly when there is no user switch, else carried in
 * {@link LAUNCH_ENV} for the app's side of the switch.
 */
export function launchEnvironment(
  launch: { switchesUser: boolean },
  base: NodeJS.ProcessEnv,
  appEnv: Record<string, string>,
  agentSet: Record<string, string>,
): NodeJS.ProcessEnv {
  if (!launch.switchesUser) return { ...base, ...appEnv, ...agentSet };
  const chunks: string[] = [];
  let chunk = '';
  for (const [key, value] of Object.entries(appEnv)) {
    if (key in agentSet || SHELL_SET.has(key) || key === LOOP || key.startsWith(LAUNCH_ENV))
      continue;
    // Config and env files allow only such names; the script is eval'd, so check again here.
    if (!SHELL_NAME.test(key))
      throw new BatonError(
        'CONFIG_INVALID',
        `environment variable name ${JSON.stringify(key)} is not a valid name; use letters, digits and _`,
      );
    const statement = `export ${key}=${shellQuote(value)}\n`;
    if (chunk && Buffer.byteLength(chunk) + Buffer.byteLength(statement) > LAUNCH_ENV_CHUNK) {
      chunks.push(chunk);
      chunk = '';
    }
    chunk += statement;
  }
  if (chunk) chunks.push(chunk);
  const env: NodeJS.ProcessEnv = { ...base, ...agentSet, [LAUNCH_ENV]: String(chunks.length) };
  chunks.forEach((c, i) => (env[`${LAUNCH_ENV}_${i}`] = c));
  return env;
}

/**
 * Shell statements and the exec prefix that start "$@" as `runAs`, with the app's umask and
 * limits, for `/bin/sh -c '<setup>; …; <exec> "$@"'`. `setup` is never empty.
 */
export function launchShell(
  runAs: RunAs | undefined,
  app: Pick<AppConfig, 'umask' | 'limits'>,
): { setup: string; exec: string; switchesUser: boolean } {
  const statements = [`umask ${app.umask.toString(8).padStart(4, '0')}`];
  const { openFiles, coreBytes } = app.limits;
  // Without -S or -H, sh sets soft and hard limit both, as systemd's LimitNOFILE=N does.
  if (openFiles !== undefined)
    statements.push(ulimit('-n', openFiles, `open files to ${openFiles} (limits.openFiles)`));
  // sh's ulimit -c counts 512-byte blocks (dash, bash as sh, busybox ash); round up, never down.
  if (coreBytes !== undefined)
    statements.push(
      ulimit(
        '-c',
        Math.ceil(coreBytes / 512),
        `core size to ${coreBytes} bytes (limits.coreBytes)`,
      ),
    );
  if (runAs === undefined)
    return { setup: statements.join('; '), exec: 'exec', switchesUser: false };
  const groups = runAs.groups.length ? `--groups=${runAs.groups.join(',')}` : '--clear-groups';
  // Runs as the app's user: the app's environment is set only here (see LAUNCH_ENV).
  const appSide =
    `${LOOP}=0; while [ "$${LOOP}" -lt "$${LAUNCH_ENV}" ]; do ` +
    `eval "eval \\"\\$${LAUNCH_ENV}_$${LOOP}\\""; unset "${LAUNCH_ENV}_$${LOOP}"; ${LOOP}=$((${LOOP} + 1)); done; ` +
    `unset ${LOOP} ${LAUNCH_ENV}; exec "$@"`;
  return {
    setup: statements.join('; '),
    exec: `exec ${shellQuote(setpriv())} --reuid=${runAs.uid} --regid=${runAs.gid} ${groups} -- /bin/sh -c ${shellQuote(appSide)} baton-launch`,
    switchesUser: true,
  };
}

/** Environment systemd sets for `User=`: USER, LOGNAME and HOME; nothing when runAs is unset. */
export function accountEnv(runAs: RunAs | undefined): Record<string, string> {
  if (runAs === undefined) return {};
  const env: Record<string, string> = { USER: runAs.user, LOGNAME: runAs.user };
  if (runAs.home !== undefined) env.HOME = runAs.home;
  return env;
}
