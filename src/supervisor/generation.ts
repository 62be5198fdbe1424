import type { ChildProcess } from 'node:child_process';
import { BatonError, errorMessage } from '../errors.js';
import { report, type Reporter } from '../protocol/events.js';
import { onReadyLine } from './activation.js';
import { MAX_TIMER_MS, type AppConfig, type ReadinessConfig } from '../protocol/app-schema.js';
import {
  spawnGeneration,
  type Exit,
  type GenerationStart,
  type Launch,
} from './generation-launch.js';
import { GenerationProcesses } from './generation-processes.js';
import { pollHealth } from './health-check.js';
import { LogTail } from './log-tail.js';
import { watchMemory } from './memory-watch.js';
import type { GenerationRecord } from './state.js';
import { NotifySocket, type NotifyMessage } from './notify-socket.js';
import { delay, isAlive, processInfo } from './process-util.js';

/** What a generation may ask of its supervisor, beyond exiting. */
export interface GenerationEvents {
  /** The main process changed (`MAINPID=`): the record should be saved again. */
  mainChanged(gen: Generation): void;
  /** Its processes' resident memory went over `limits.memoryBytes`. */
  overMemory(gen: Generation, bytes: number): void;
}

/** After the main process exits, how long a `MAINPID=` sent just before may take to arrive. */
const MAINPID_GRACE_MS = 500;

/** One running instance of an app, started from one release with the app's listeners inherited. */
export class Generation {
  readonly exited: Promise<Exit>;
  private settleExit: (exit: Exit) => void = () => undefined;
  private exitInfo: Exit | undefined;
  private readyListeners: (() => void)[] = [];
  private ready = false;
  private stopping = false;
  /** Left to a successor agent: it runs on, this process no longer watches it. */
  private handedOff = false;
  private readonly processes: GenerationProcesses;
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
    this.processes = new GenerationProcesses(app.name, record);
    const pid = record.pid;
    void (childExit ?? this.pollExit(pid)).then((exit) => this.mainExited(pid, exit));
    void this.exited.then(async (exit) => {
      this.exitInfo = exit;
      this.processes.forget();
      clearTimeout(this.watchdogTimer);
      clearInterval(this.memoryTimer);
      if (!this.stopping) await this.endLeftovers();
      await this.notify?.close(!this.handedOff);
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
   * The main process went on its own: what is left of the generation (workers in its groups, a
   * child that left them) is asked to drain, and killed at the drain deadline, as systemd ends
   * what remains of a service whose main process exited. Nothing old keeps taking connections
   * next to the generation that replaces it.
   */
  private async endLeftovers(): Promise<void> {
    const { signal, timeoutMs } = this.app.drain;
    const strays = await this.processes.signalWhole(signal);
    const timer = setTimeout(() => {
      void this.processes.anyLeft(strays).then(async (left) => {
        if (left) await this.processes.signalWhole('SIGKILL', strays);
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

  static async start(opts: GenerationStart & { reporter: Reporter }): Promise<Generation> {
    const { app, number, release, reporter, launch } = opts;
    const { child, childExit, logFile, healthPort, notifyFd, notify, onNotify } =
      await spawnGeneration(opts);
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
    if (launch.owner) gen.processes.uid = launch.owner.uid;
    const pipe = child.stdio[notifyFd];
    if (pipe && 'on' in pipe) onReadyLine(pipe as NodeJS.ReadableStream, () => gen.markReady());
    if (notify) {
      gen.notify = notify;
      onNotify((m) => gen.queueNotify(m));
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
    if (launch.owner) gen.processes.uid = launch.owner.uid;
    if (info) gen.processes.groups.add(info.pgid);
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
      if (this.handedOff) return new Promise<Exit>(() => undefined);
      // Seen empty early, a group is dropped long before its number could be given out again.
      this.processes.pruneGroups();
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
    if (pid === this.record.pid || !(await this.processes.belongs(pid))) {
      if (pid !== this.record.pid)
        this.say(`MAINPID=${pid} ignored: not a process of this generation`);
      return;
    }
    const info = processInfo(pid);
    if (!info) return;
    this.record.pid = pid;
    this.record.startTime = info.startTicks;
    this.processes.trackMainGroup();
    this.events.mainChanged(this);
    void this.pollExit(pid).then((exit) => this.mainExited(pid, exit));
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
    const timer = setTimeout(() => this.processes.signalAll('SIGKILL'), this.app.drain.timeoutMs);
    timer.unref();
    void this.exited.then(() => clearTimeout(timer));
    this.processes.signalAll('SIGABRT');
  }

  /** Tells the supervisor when the generation's processes go over `limits.memoryBytes`. */
  private watchMemory(): void {
    this.memoryTimer = watchMemory({
      app: this.app,
      processes: this.processes,
      active: () => !this.stopping && !this.hasExited,
      over: (bytes, limit) => {
        this.say(
          `memory ceiling: ${Math.round(bytes / 2 ** 20)} MiB resident, over the ${Math.round(limit / 2 ** 20)} MiB of limits.memoryBytes`,
        );
        this.events.overMemory(this, bytes);
      },
    });
  }

  /** Lets the generation run on without this process: no more watching, nothing keeps the event loop alive. */
  async handOff(): Promise<void> {
    this.handedOff = true;
    clearTimeout(this.watchdogTimer);
    clearInterval(this.memoryTimer);
    // The successor binds the same path again; the directory stays.
    await this.notify?.close(false);
    this.child?.unref();
    const notify = this.child?.stdio[this.notifyFd];
    if (notify && 'destroy' in notify) notify.destroy();
    await this.tail.stop();
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
      checks.push(
        pollHealth(this.healthPort, readiness.path, readiness.intervalMs, () => stopPolling).then(
          (ready) => {
            this.markReady();
            return ready;
          },
        ),
      );
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
      await this.processes.signalWhole('SIGKILL');
      return 'exited';
    }
    const { signal, timeoutMs } = this.app.drain;
    const deadline = Date.now() + timeoutMs;
    const strays = await this.processes.signalWhole(reason === 'abort' ? 'SIGKILL' : signal);
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
      while (Date.now() < deadline && (await this.processes.anyLeft(strays))) await delay(50);
    await this.processes.signalWhole('SIGKILL', strays);
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
