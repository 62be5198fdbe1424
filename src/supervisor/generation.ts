import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, constants, openSync } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { BatonError, errorMessage } from '../errors.js';
import { report, type Reporter } from '../protocol/events.js';
import { MAX_TIMER_MS, type AppConfig, type ReadinessConfig } from './config.js';
import type { Listener } from './listeners.js';
import { LogTail, type LineMasker } from './log-tail.js';
import type { GenerationRecord } from './state.js';
import { NotifySocket, type NotifyMessage } from './notify-socket.js';
import { launchEnvironment } from './privilege.js';
import {
  childBaseEnv,
  delay,
  groupsResidentBytes,
  isAlive,
  processInfo,
  scanPause,
  resolveCommand,
  signalGroup,
} from './process-util.js';

export interface Release {
  id: string;
  dir: string;
}

export type { GenerationRecord };

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/**
 * How a generation's processes are started: shell statements run first (umask, ulimits) and the
 * exec prefix that becomes the app's user. See privilege.ts.
 */
export interface Launch {
  setup: string;
  exec: string;
  /** Whether `exec` switches to the app's user (see launchEnvironment). */
  switchesUser: boolean;
  /** Environment added last: the env file, USER/HOME/LOGNAME of the app's user. */
  env: Record<string, string>;
  /** Who owns the generation's notify socket: the app's user. */
  owner: { uid: number; gid: number } | undefined;
  /** Where per-generation notify sockets go. */
  runDir: string;
  /** Masks the app's secrets in its output; asked at every line, as secrets are learnt. */
  masker?: () => LineMasker;
}

const LOG_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_APPEND;

/** What a generation may ask of its supervisor, beyond exiting. */
export interface GenerationEvents {
  /** The main process changed (`MAINPID=`): the record should be saved again. */
  mainChanged(gen: Generation): void;
  /** Its processes' resident memory went over `limits.memoryBytes`. */
  overMemory(gen: Generation, bytes: number): void;
}

/** After the main process exits, how long a `MAINPID=` sent just before may take to arrive. */
const MAINPID_GRACE_MS = 500;

// Exports LISTEN_PID (and WATCHDOG_PID) as the app's own pid, which spawn cannot know before
// exec, then execs the app, as its user when one is set.
function execScript(launch: Launch, watchdog: boolean): string {
  const setup = launch.setup ? `${launch.setup}; ` : '';
  const pids = watchdog
    ? 'LISTEN_PID=$$; WATCHDOG_PID=$$; export LISTEN_PID WATCHDOG_PID; '
    : 'LISTEN_PID=$$; export LISTEN_PID; ';
  return `${setup}${pids}${launch.exec} "$@"`;
}

async function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

export async function checkReleaseDir(dir: string): Promise<void> {
  const info = await stat(dir).catch(() => undefined);
  if (!info?.isDirectory())
    throw new BatonError(
      'RELEASE_DIR_MISSING',
      `release directory ${dir} does not exist or is not a directory; deploy a release that is on this host`,
    );
}

/**
 * This agent's generations that have not exited, every app's: a process in one's groups is that
 * one's, never another's stray (a stray keeps its session, and a group cannot be joined across
 * sessions), so a stray search need not read its environment.
 */
const running = new Set<Generation>();

let ownGroup: number | undefined;
/** The agent's own process group, which no signal to an app may reach. */
function agentGroup(): number | undefined {
  ownGroup ??= processInfo(process.pid)?.pgid;
  return ownGroup;
}

/** One running instance of an app, started from one release with the app's listeners inherited. */
export class Generation {
  readonly exited: Promise<Exit>;
  private settleExit: (exit: Exit) => void = () => undefined;
  private exitInfo: Exit | undefined;
  private readyListeners: (() => void)[] = [];
  private ready = false;
  private stopping = false;
  private released = false;
  /** Process groups to signal: the one it was started in, and its main process's. */
  private readonly groups = new Set<number>();
  private notify: NotifySocket | undefined;
  /** Datagrams are handled one after another, in the order they came. */
  private notifyChain: Promise<void> = Promise.resolve();
  /** The last `STATUS=` the generation sent. */
  statusText: string | undefined;
  /** `STOPPING=1` or `RELOADING=1`, until the next `READY=1`. */
  notifyState: 'stopping' | 'reloading' | undefined;
  /** Why the supervisor ended it (a missed watchdog), for the crash report. */
  private failure: string | undefined;
  private extendDeadline: ((ms: number) => void) | undefined;
  private watchdogTimer: NodeJS.Timeout | undefined;
  private memoryTimer: NodeJS.Timeout | undefined;
  events: GenerationEvents = { mainChanged: () => undefined, overMemory: () => undefined };
  /** The uid the generation's processes run as: only such processes can be its strays. */
  private appUid = process.getuid?.() ?? 0;

  private constructor(
    readonly app: AppConfig,
    readonly record: GenerationRecord,
    private readonly tail: LogTail,
    private readonly healthPort: number | undefined,
    private readonly child: ChildProcess | undefined,
    childExit: Promise<Exit> | undefined,
    private readonly notifyFd: number,
    private readonly reporter: Reporter,
  ) {
    this.exited = new Promise<Exit>((resolve) => (this.settleExit = resolve));
    this.groups.add(record.pid);
    running.add(this);
    const pid = record.pid;
    void (childExit ?? this.pollExit(pid)).then((exit) => this.mainExited(pid, exit));
    void this.exited.then(async (exit) => {
      this.exitInfo = exit;
      running.delete(this);
      clearTimeout(this.watchdogTimer);
      clearInterval(this.memoryTimer);
      if (!this.stopping) await this.endLeftovers();
      await this.notify?.close(!this.released);
      await this.tail.stop();
    });
  }

  /** The main process `pid` exited: the generation has, unless it named another main process. */
  private async mainExited(pid: number, exit: Exit): Promise<void> {
    if (pid !== this.record.pid) return;
    // A forking app may say MAINPID= just before its first process exits: let that arrive.
    // Not when the agent itself asked it to stop.
    if (this.notify && !this.stopping) {
      const started = Date.now();
      for (;;) {
        await delay(50);
        // Timers run before the event loop polls for I/O: after a long stall the grace could
        // end with the datagram still unread. Let the poll phase run, then let it be handled.
        await new Promise<void>((resolve) => setImmediate(resolve));
        await this.notifyChain;
        if (pid !== this.record.pid || this.stopping) break;
        if (Date.now() - started >= MAINPID_GRACE_MS) break;
      }
    }
    if (pid === this.record.pid) this.settleExit(exit);
  }

  /**
   * Live processes outside the generation's groups that carry its environment (a child that
   * called setsid()). Only a generation with a notify socket can be told apart this way: the
   * socket's path is random.
   */
  private async strays(): Promise<number[]> {
    if (this.record.notifySocket === undefined) return [];
    this.trackMainGroup();
    // Only processes of the app's user that started with or after the generation (a minute's
    // margin: the boot time is in whole seconds and the wall clock may have been set since):
    // their environment is all that is read.
    const since = Date.parse(this.record.startedAt) - 60_000;
    const others = new Set<number>();
    for (const gen of running) if (gen !== this) for (const g of gen.groups) others.add(g);
    const found: number[] = [];
    const entries = await readdir('/proc').catch(() => [] as string[]);
    for (const [i, entry] of entries.entries()) {
      if (!/^\d+$/.test(entry)) continue;
      await scanPause(i);
      const pid = Number(entry);
      // One read decides for nearly every process on the host; the rest are the few new ones.
      const info = processInfo(pid);
      if (!info || info.zombie || this.groups.has(info.pgid) || others.has(info.pgid)) continue;
      if ((info.startedAtMs ?? Infinity) < since) continue;
      const owner = await stat(`/proc/${entry}`).catch(() => undefined);
      if (owner?.uid !== this.appUid) continue;
      if (await this.carriesEnvironment(pid)) found.push(pid);
    }
    return found;
  }

  /**
   * Drops the groups no process is in any more. Linux does not give out a number still in use as
   * a process group, so an empty one could only come back as someone else's: it is never
   * signalled again.
   */
  private pruneGroups(): void {
    for (const g of this.groups) {
      try {
        process.kill(-g, 0);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ESRCH') this.groups.delete(g);
      }
    }
  }

  /** Whether anything of the generation is left: a process in its groups, or one of `strays`. */
  private async anyLeft(strays: readonly number[]): Promise<boolean> {
    this.pruneGroups();
    if (this.groups.size > 0) return true;
    for (const pid of strays) if (await this.carriesEnvironment(pid)) return true;
    return false;
  }

  /**
   * The main process went on its own: what is left of the generation (workers in its groups, a
   * child that left them) is asked to drain, and killed at the drain deadline, as systemd ends
   * what remains of a service whose main process exited. Nothing old keeps taking connections
   * next to the generation that replaces it.
   */
  private async endLeftovers(): Promise<void> {
    const { signal, timeoutMs } = this.app.drain;
    const strays = await this.signalWhole(signal);
    const timer = setTimeout(() => {
      void this.anyLeft(strays).then(async (left) => {
        if (left) await this.signalWhole('SIGKILL', strays);
      });
    }, timeoutMs);
    timer.unref();
  }

  get number(): number {
    return this.record.number;
  }
  get pid(): number {
    return this.record.pid;
  }
  get releaseId(): string {
    return this.record.releaseId;
  }
  get hasExited(): boolean {
    return this.exitInfo !== undefined;
  }
  get isStopping(): boolean {
    return this.stopping;
  }
  lines(): string[] {
    return this.tail.lines();
  }

  static async start(opts: {
    app: AppConfig;
    number: number;
    release: Release;
    listeners: readonly Listener[];
    logDir: string;
    previousReleaseId: string | undefined;
    reporter: Reporter;
    launch: Launch;
  }): Promise<Generation> {
    const { app, number, release, listeners, reporter, launch } = opts;
    await checkReleaseDir(release.dir);
    const base = childBaseEnv(app.passEnv);
    const appEnv = { ...app.env, ...launch.env };
    const executable = await resolveCommand(app.command[0]!, release.dir, appEnv.PATH ?? base.PATH);
    const env: Record<string, string> = {
      LISTEN_FDS: String(listeners.length),
      LISTEN_FDNAMES: listeners.map((l) => l.name).join(':'),
      BATON_APP: app.name,
      BATON_RELEASE_ID: release.id,
      BATON_RELEASE_DIR: release.dir,
      BATON_GENERATION: String(number),
    };
    if (opts.previousReleaseId) env.BATON_PREVIOUS_RELEASE_ID = opts.previousReleaseId;
    const notifyFd = 3 + listeners.length;
    if (app.readiness.type === 'notify') env.BATON_NOTIFY_FD = String(notifyFd);
    const healthPort = app.readiness.type === 'http' ? await freeLoopbackPort() : undefined;
    if (healthPort !== undefined) env.BATON_HEALTH_PORT = String(healthPort);
    const watchdogMs = app.readiness.type === 'systemd' ? app.readiness.watchdogMs : undefined;
    if (watchdogMs !== undefined) env.WATCHDOG_USEC = String(watchdogMs * 1000);
    // Bound before the app starts, so its first datagram has somewhere to go; messages are
    // handled once the generation exists.
    const early: NotifyMessage[] = [];
    let deliver = (message: NotifyMessage): void => void early.push(message);
    const notify =
      app.readiness.type === 'systemd'
        ? await NotifySocket.open(launch.runDir, launch.owner, (m) => deliver(m))
        : undefined;
    if (notify) env.NOTIFY_SOCKET = notify.path;

    const logFile = path.join(opts.logDir, `${app.name}.gen-${number}.log`);
    // Truncated: a number reused after a lost state file must not replay another process's
    // lines. Append: when the tail cuts the file back, the app writes on at the new end instead
    // of at its old offset (which would leave a hole of NUL bytes as large as the file was).
    let out: number;
    try {
      out = openSync(logFile, LOG_FLAGS, 0o640);
    } catch (err) {
      await notify?.close();
      throw err;
    }
    let child: ChildProcess;
    let childExit: Promise<Exit>;
    try {
      child = spawn(
        '/bin/sh',
        [
          '-c',
          execScript(launch, watchdogMs !== undefined),
          app.name,
          executable,
          ...app.command.slice(1),
        ],
        {
          cwd: release.dir,
          env: launchEnvironment(launch, base, appEnv, env),
          detached: true,
          stdio: [
            'ignore',
            out,
            out,
            ...listeners.map((l) => l.fd),
            app.readiness.type === 'notify' ? 'pipe' : 'ignore',
          ],
        },
      );
      // Listen for the exit before any await: an app that dies at once must not go unseen.
      // 'exit', not 'close': output goes to a file and the notify pipe may be held open by a
      // process the app forked; the main process's death is what matters here.
      childExit = new Promise<Exit>((resolve) => {
        child.once('exit', (code, signal) => resolve({ code, signal }));
      });
      await new Promise<void>((resolve, reject) => {
        child.once('spawn', resolve);
        child.once('error', reject);
      });
    } catch (err) {
      await notify?.close();
      throw err;
    } finally {
      closeSync(out);
    }
    const pid = child.pid!;
    const source = `gen-${number}`;
    const tail = new LogTail(
      logFile,
      app.logLines,
      app.maxLogBytes,
      (line) => report(reporter, { type: 'log', app: app.name, source, line }),
      launch.masker,
    );
    await tail.start();
    const record: GenerationRecord = {
      number,
      pid,
      startTime: processInfo(pid)?.startTicks,
      releaseId: release.id,
      releaseDir: release.dir,
      startedAt: new Date().toISOString(),
      logFile,
      ...(notify && { notifySocket: notify.path }),
    };
    const gen = new Generation(app, record, tail, healthPort, child, childExit, notifyFd, reporter);
    if (launch.owner) gen.appUid = launch.owner.uid;
    const pipe = child.stdio[notifyFd];
    if (pipe && 'on' in pipe) gen.readNotify(pipe as NodeJS.ReadableStream);
    if (notify) {
      gen.notify = notify;
      deliver = (m) => gen.queueNotify(m);
      for (const m of early.splice(0)) deliver(m);
    }
    gen.watchMemory();
    report(reporter, {
      type: 'phase',
      app: app.name,
      phase: 'generation-started',
      generation: number,
      releaseId: release.id,
      pid,
    });
    return gen;
  }

  /** Takes back a generation a previous agent started, if it is still the same process. */
  static async adopt(
    app: AppConfig,
    record: GenerationRecord,
    reporter: Reporter,
    launch: Launch,
  ): Promise<Generation | undefined> {
    if (!isAlive(record.pid)) return undefined;
    const info = processInfo(record.pid);
    if (record.startTime !== undefined && info?.startTicks !== record.startTime) return undefined;
    const tail = new LogTail(
      record.logFile,
      app.logLines,
      app.maxLogBytes,
      (line) =>
        report(reporter, { type: 'log', app: app.name, source: `gen-${record.number}`, line }),
      launch.masker,
    );
    await tail.start(100, false);
    const gen = new Generation(app, record, tail, undefined, undefined, undefined, -1, reporter);
    if (launch.owner) gen.appUid = launch.owner.uid;
    if (info) gen.groups.add(info.pgid);
    gen.ready = true;
    // The app sends to the same path as before: bind it again (the old agent's socket is gone).
    if (app.readiness.type === 'systemd' && record.notifySocket) {
      gen.notify = await NotifySocket.open(
        launch.runDir,
        launch.owner,
        (m) => gen.queueNotify(m),
        record.notifySocket,
      ).catch((err: unknown) => {
        gen.say(`notify socket not bound again: ${errorMessage(err)}`);
        return undefined;
      });
      gen.armWatchdog();
    }
    gen.watchMemory();
    return gen;
  }

  private async pollExit(pid: number): Promise<Exit> {
    while (isAlive(pid) && !processInfo(pid)?.zombie) {
      await delay(100);
      if (this.released) return new Promise<Exit>(() => undefined);
      // Seen empty early, a group is dropped long before its number could be given out again.
      this.pruneGroups();
    }
    return { code: null, signal: null };
  }

  /** A line in the generation's stream from the agent, about it (notify messages, watchdog). */
  private say(line: string): void {
    report(this.reporter, {
      type: 'log',
      app: this.app.name,
      source: `gen-${this.number}:notify`,
      line,
    });
  }

  private queueNotify(message: NotifyMessage): void {
    this.notifyChain = this.notifyChain.then(() => this.onNotify(message)).catch(() => undefined);
  }

  private async onNotify(message: NotifyMessage): Promise<void> {
    if (this.hasExited) return;
    for (const line of message.lines) this.say(line);
    if (message.status !== undefined) this.statusText = message.status;
    if (message.stopping) this.notifyState = 'stopping';
    if (message.reloading) this.notifyState = 'reloading';
    if (message.extendTimeoutUsec !== undefined)
      this.extendDeadline?.(Math.ceil(message.extendTimeoutUsec / 1000));
    if (message.mainPid !== undefined) await this.followMain(message.mainPid);
    if (message.ready) {
      this.notifyState = undefined;
      this.markReady();
    }
    if (message.watchdog === 'ping') this.armWatchdog();
    if (message.watchdog === 'trigger') this.fail('the app asked for it (WATCHDOG=trigger)');
  }

  /**
   * `MAINPID=`: a forking app names its real main process. Taken only for a process of this
   * generation: a descendant of its main process, or one whose environment is this generation's.
   */
  private async followMain(pid: number): Promise<void> {
    if (pid === this.record.pid || !(await this.belongs(pid))) {
      if (pid !== this.record.pid)
        this.say(`MAINPID=${pid} ignored: not a process of this generation`);
      return;
    }
    const info = processInfo(pid);
    if (!info) return;
    this.record.pid = pid;
    this.record.startTime = info.startTicks;
    this.trackMainGroup();
    this.events.mainChanged(this);
    void this.pollExit(pid).then((exit) => this.mainExited(pid, exit));
  }

  /**
   * Adds the main process's current process group to those signalled. A forked main process
   * may call setsid() after it was named, so this is looked up again before each signal.
   */
  private trackMainGroup(): void {
    const info = processInfo(this.record.pid);
    if (!info || info.startTicks !== this.record.startTime) return;
    // Never the agent's own group, whatever the app did.
    if (info.pgid > 1 && info.pgid !== agentGroup()) this.groups.add(info.pgid);
  }

  /** Signals every process group of the generation, including its main process's current one. */
  private signalAll(signal: NodeJS.Signals): void {
    this.trackMainGroup();
    this.pruneGroups();
    for (const g of this.groups) signalGroup(g, signal);
  }

  /**
   * Signals the whole generation: its groups first, then its strays (`strays` found before, or
   * looked for now: that reads /proc, which takes a while on a busy host). Returns the strays.
   */
  private async signalWhole(
    signal: NodeJS.Signals,
    strays?: readonly number[],
  ): Promise<readonly number[]> {
    this.signalAll(signal);
    const found = strays ?? (await this.strays());
    await this.signalStrays(found, signal);
    return found;
  }

  /**
   * Signals the `strays` found before, each only while it still carries the generation's
   * environment and is not in one of its groups (signalled already).
   */
  private async signalStrays(strays: readonly number[], signal: NodeJS.Signals): Promise<void> {
    for (const pid of strays) {
      const info = processInfo(pid);
      if (!info || this.groups.has(info.pgid) || !(await this.carriesEnvironment(pid))) continue;
      try {
        process.kill(pid, signal);
      } catch {
        // Gone already.
      }
    }
  }

  private async belongs(pid: number): Promise<boolean> {
    for (let p = pid, hops = 0; p > 1 && hops < 64; hops++) {
      if (p === this.record.pid) return true;
      const info = processInfo(p);
      if (!info) break;
      p = info.ppid;
    }
    // Its parent may have exited already (a daemon's double fork): its environment tells.
    return this.carriesEnvironment(pid);
  }

  private async carriesEnvironment(pid: number): Promise<boolean> {
    if (this.record.notifySocket === undefined) return false;
    const environ = await readFile(`/proc/${pid}/environ`, 'utf8').catch(() => '');
    const vars = new Set(environ.split('\0'));
    return (
      vars.has(`BATON_APP=${this.app.name}`) &&
      vars.has(`BATON_GENERATION=${this.number}`) &&
      vars.has(`NOTIFY_SOCKET=${this.record.notifySocket}`)
    );
  }

  /** Once ready, each `WATCHDOG=1` must come within `watchdogMs` of the last. */
  private armWatchdog(): void {
    const readiness = this.app.readiness;
    if (readiness.type !== 'systemd' || readiness.watchdogMs === undefined) return;
    if (!this.ready || this.hasExited || this.stopping || this.failure) return;
    const ms = readiness.watchdogMs;
    clearTimeout(this.watchdogTimer);
    this.watchdogTimer = setTimeout(() => this.fail(`no WATCHDOG=1 within ${ms} ms`), ms);
    this.watchdogTimer.unref();
  }

  /**
   * Ends a generation that is not well (a missed watchdog), the way systemd does: SIGABRT, then
   * SIGKILL at the drain deadline. The supervisor sees it exit as a crash and restarts it with
   * the listeners kept open, so connections queue rather than being refused.
   */
  private fail(reason: string): void {
    if (this.failure || this.hasExited || this.stopping) return;
    this.failure = `watchdog: ${reason}`;
    clearTimeout(this.watchdogTimer);
    this.say(`${this.failure}; sending SIGABRT`);
    // The deadline first: nothing that goes wrong with the first signal may leave it unkilled.
    const timer = setTimeout(() => this.signalAll('SIGKILL'), this.app.drain.timeoutMs);
    timer.unref();
    void this.exited.then(() => clearTimeout(timer));
    this.signalAll('SIGABRT');
  }

  /** Samples the resident memory of the generation's processes against `limits.memoryBytes`. */
  private watchMemory(): void {
    const limit = this.app.limits.memoryBytes;
    if (limit === undefined) return;
    // Told again while still over, a while after: a restart put off (a deploy was running) or
    // failed must not leave the generation over its ceiling for good.
    const again = Math.max(this.app.restart.maxBackoffMs, this.app.limits.memoryCheckMs);
    let toldAt = -Infinity;
    const quiet = () => Date.now() - toldAt < again;
    let sampling = false;
    this.memoryTimer = setInterval(() => {
      if (sampling || quiet() || this.stopping || this.hasExited) return;
      sampling = true;
      this.trackMainGroup();
      this.pruneGroups();
      void groupsResidentBytes(this.groups)
        .then((bytes) => {
          if (bytes <= limit || quiet() || this.stopping || this.hasExited) return;
          toldAt = Date.now();
          this.say(
            `memory ceiling: ${Math.round(bytes / 2 ** 20)} MiB resident, over the ${Math.round(limit / 2 ** 20)} MiB of limits.memoryBytes`,
          );
          this.events.overMemory(this, bytes);
        })
        .finally(() => (sampling = false));
    }, this.app.limits.memoryCheckMs);
    this.memoryTimer.unref();
  }

  /** Lets the generation run on without this process: no more watching, nothing keeps the event loop alive. */
  async release(): Promise<void> {
    this.released = true;
    clearTimeout(this.watchdogTimer);
    clearInterval(this.memoryTimer);
    // The successor binds the same path again; the directory stays.
    await this.notify?.close(false);
    this.child?.unref();
    const notify = this.child?.stdio[this.notifyFd];
    if (notify && 'destroy' in notify) notify.destroy();
    await this.tail.stop();
  }

  private readNotify(stream: NodeJS.ReadableStream): void {
    let buffered = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      buffered = (buffered + chunk).slice(-4096);
      const lines = buffered.split('\n');
      buffered = lines.pop() ?? '';
      if (lines.some((l) => l.trim() === 'READY=1')) this.markReady();
    });
    // A generation that closes the pipe is not ready by that alone; ignore errors after exit.
    stream.on('error', () => undefined);
  }

  private markReady(): void {
    if (this.ready) return;
    this.ready = true;
    for (const fn of this.readyListeners.splice(0)) fn();
    this.armWatchdog();
  }

  /** Resolves when the generation is ready; throws, with its last lines, when it exits or misses the deadline. */
  async waitReady(): Promise<void> {
    const readiness: ReadinessConfig = this.app.readiness;
    const timeoutMs = readiness.type === 'delay' ? readiness.ms : readiness.timeoutMs;
    let timer: NodeJS.Timeout | undefined;
    let stopPolling = false;
    const signalled = new Promise<'ready'>((resolve) => {
      if (this.ready) resolve('ready');
      else this.readyListeners.push(() => resolve('ready'));
    });
    const waitStart = Date.now();
    let end = waitStart + timeoutMs;
    const deadline = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), timeoutMs);
      // EXTEND_TIMEOUT_USEC=: the deadline moves to that long from now, if that is later.
      this.extendDeadline = (asked) => {
        // EXTEND_TIMEOUT_USEC= comes from the app: no longer than a timer can wait.
        const ms = Math.min(asked, MAX_TIMER_MS);
        if (Date.now() + ms <= end) return;
        end = Date.now() + ms;
        clearTimeout(timer);
        timer = setTimeout(() => resolve('timeout'), ms);
      };
    });
    const checks: Promise<'ready' | 'timeout' | Exit>[] = [this.exited, deadline];
    if (readiness.type === 'notify' || readiness.type === 'systemd') checks.push(signalled);
    if (readiness.type === 'http')
      checks.push(this.pollHealth(readiness.path, readiness.intervalMs, () => stopPolling));
    try {
      const outcome = await Promise.race(checks);
      if (outcome === 'ready') return;
      if (outcome === 'timeout' && readiness.type === 'delay') {
        if (!this.hasExited) return;
      }
      await this.tail.poll();
      const lines = this.lines().slice(-20);
      if (outcome === 'timeout')
        throw new BatonError(
          'READINESS_TIMEOUT',
          `generation ${this.number} (${this.releaseId}) was not ready within ${end - waitStart} ms (${readiness.type} readiness); the old generation keeps serving`,
          lines,
        );
      const exit = this.exitInfo ?? outcome;
      throw new BatonError(
        'GENERATION_EXITED',
        `generation ${this.number} (${this.releaseId}) exited before it was ready (${exit.signal ?? `code ${exit.code}`}); the old generation keeps serving`,
        lines,
      );
    } finally {
      stopPolling = true;
      this.extendDeadline = undefined;
      clearTimeout(timer);
    }
  }

  private async pollHealth(
    pathName: string,
    intervalMs: number,
    stopped: () => boolean,
  ): Promise<'ready'> {
    while (!stopped()) {
      const status = await new Promise<number>((resolve) => {
        const req = http.get(
          { host: '127.0.0.1', port: this.healthPort, path: pathName, timeout: 2000, agent: false },
          (res) => {
            res.resume();
            resolve(res.statusCode ?? 0);
          },
        );
        req.on('timeout', () => req.destroy());
        req.on('error', () => resolve(0));
      });
      if (status >= 200 && status < 300) {
        this.markReady();
        return 'ready';
      }
      await delay(intervalMs);
    }
    return new Promise<'ready'>(() => undefined);
  }

  /**
   * Asks the generation to drain with the app's drain signal; SIGKILL at the deadline. What the
   * generation forked gets the signal too, and until the same deadline to finish after its main
   * process exited; then it is killed, so no stray process keeps a listener: its process groups,
   * and for `readiness: systemd` a process in a session of its own that carries the
   * generation's environment.
   */
  async stop(reason: 'drain' | 'abort'): Promise<'exited' | 'killed'> {
    this.stopping = true;
    clearTimeout(this.watchdogTimer);
    if (this.hasExited) {
      await this.signalWhole('SIGKILL');
      return 'exited';
    }
    const { signal, timeoutMs } = this.app.drain;
    const deadline = Date.now() + timeoutMs;
    const strays = await this.signalWhole(reason === 'abort' ? 'SIGKILL' : signal);
    let timer: NodeJS.Timeout | undefined;
    const outcome = await Promise.race([
      this.exited.then(() => 'exited' as const),
      new Promise<'timeout'>(
        (resolve) => (timer = setTimeout(() => resolve('timeout'), timeoutMs)),
      ),
    ]);
    clearTimeout(timer);
    // What the main process leaves behind (workers still finishing their requests) has until the
    // same deadline, as under systemd: killed at once, they would drop what they were answering.
    if (outcome === 'exited')
      while (Date.now() < deadline && (await this.anyLeft(strays))) await delay(50);
    await this.signalWhole('SIGKILL', strays);
    if (outcome === 'timeout') {
      await this.exited;
      return 'killed';
    }
    return 'exited';
  }

  exitDescription(): string {
    const exit = this.exitInfo;
    if (!exit) return 'running';
    const how = exit.signal
      ? `killed by ${exit.signal}`
      : exit.code === null
        ? 'gone'
        : `exit code ${exit.code}`;
    return this.failure ? `${this.failure}; ${how}` : how;
  }
}
