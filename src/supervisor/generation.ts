import { spawn, type ChildProcess } from 'node:child_process';
import { openSync, closeSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { BatonError } from '../errors.js';
import { report, type Reporter } from '../protocol/events.js';
import type { AppConfig, ReadinessConfig } from './config.js';
import type { Listener } from './listeners.js';
import { LogTail } from './log-tail.js';
import type { GenerationRecord } from './state.js';
import {
  childBaseEnv,
  delay,
  isAlive,
  isZombie,
  processStartTime,
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

// Exports LISTEN_PID as the app's own pid (spawn cannot know it before exec), then execs the app.
const EXEC_WRAPPER = 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"';

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

/** One running instance of an app, started from one release with the app's listeners inherited. */
export class Generation {
  readonly exited: Promise<Exit>;
  private exitInfo: Exit | undefined;
  private readyListeners: (() => void)[] = [];
  private ready = false;
  private stopping = false;
  private released = false;

  private constructor(
    readonly app: AppConfig,
    readonly record: GenerationRecord,
    private readonly tail: LogTail,
    private readonly healthPort: number | undefined,
    private readonly child: ChildProcess | undefined,
    childExit: Promise<Exit> | undefined,
    private readonly notifyFd: number,
  ) {
    this.exited = childExit ?? this.pollExit();
    void this.exited.then(async (exit) => {
      this.exitInfo = exit;
      await this.tail.stop();
    });
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
  }): Promise<Generation> {
    const { app, number, release, listeners, reporter } = opts;
    await checkReleaseDir(release.dir);
    const env = childBaseEnv();
    const executable = await resolveCommand(app.command[0]!, release.dir, app.env.PATH ?? env.PATH);
    Object.assign(env, app.env, {
      LISTEN_FDS: String(listeners.length),
      LISTEN_FDNAMES: listeners.map((l) => l.name).join(':'),
      BATON_APP: app.name,
      BATON_RELEASE_ID: release.id,
      BATON_RELEASE_DIR: release.dir,
      BATON_GENERATION: String(number),
    });
    if (opts.previousReleaseId) env.BATON_PREVIOUS_RELEASE_ID = opts.previousReleaseId;
    const notifyFd = 3 + listeners.length;
    if (app.readiness.type === 'notify') env.BATON_NOTIFY_FD = String(notifyFd);
    const healthPort = app.readiness.type === 'http' ? await freeLoopbackPort() : undefined;
    if (healthPort !== undefined) env.BATON_HEALTH_PORT = String(healthPort);

    const logFile = path.join(opts.logDir, `${app.name}.gen-${number}.log`);
    // 'w': a number reused after a lost state file must not replay another process's lines.
    const out = openSync(logFile, 'w', 0o640);
    let child: ChildProcess;
    let childExit: Promise<Exit>;
    try {
      child = spawn(
        '/bin/sh',
        ['-c', EXEC_WRAPPER, app.name, executable, ...app.command.slice(1)],
        {
          cwd: release.dir,
          env,
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
    } finally {
      closeSync(out);
    }
    const pid = child.pid!;
    const source = `gen-${number}`;
    const tail = new LogTail(logFile, app.logLines, app.maxLogBytes, (line) =>
      report(reporter, { type: 'log', app: app.name, source, line }),
    );
    await tail.start();
    const record: GenerationRecord = {
      number,
      pid,
      startTime: await processStartTime(pid),
      releaseId: release.id,
      releaseDir: release.dir,
      startedAt: new Date().toISOString(),
      logFile,
    };
    const gen = new Generation(app, record, tail, healthPort, child, childExit, notifyFd);
    const notify = child.stdio[notifyFd];
    if (notify && 'on' in notify) gen.readNotify(notify as NodeJS.ReadableStream);
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
  ): Promise<Generation | undefined> {
    if (!isAlive(record.pid)) return undefined;
    const startTime = await processStartTime(record.pid);
    if (record.startTime !== undefined && startTime !== record.startTime) return undefined;
    const tail = new LogTail(record.logFile, app.logLines, app.maxLogBytes, (line) =>
      report(reporter, { type: 'log', app: app.name, source: `gen-${record.number}`, line }),
    );
    await tail.start(100, false);
    const gen = new Generation(app, record, tail, undefined, undefined, undefined, -1);
    gen.ready = true;
    return gen;
  }

  private async pollExit(): Promise<Exit> {
    while (isAlive(this.record.pid) && !(await isZombie(this.record.pid))) {
      await delay(100);
      if (this.released) return new Promise<Exit>(() => undefined);
    }
    return { code: null, signal: null };
  }

  /** Lets the generation run on without this process: no more watching, nothing keeps the event loop alive. */
  async release(): Promise<void> {
    this.released = true;
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
    const deadline = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), timeoutMs);
    });
    const checks: Promise<'ready' | 'timeout' | Exit>[] = [this.exited, deadline];
    if (readiness.type === 'notify') checks.push(signalled);
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
          `generation ${this.number} (${this.releaseId}) was not ready within ${timeoutMs} ms (${readiness.type} readiness); the old generation keeps serving`,
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
   * Asks the generation to drain with the app's drain signal; SIGKILL at the deadline. Whatever
   * the generation forked is killed once it has gone, so no stray process keeps a listener.
   */
  async stop(reason: 'drain' | 'abort'): Promise<'exited' | 'killed'> {
    this.stopping = true;
    if (this.hasExited) {
      signalGroup(this.pid, 'SIGKILL');
      return 'exited';
    }
    const { signal, timeoutMs } = this.app.drain;
    signalGroup(this.pid, reason === 'abort' ? 'SIGKILL' : signal);
    let timer: NodeJS.Timeout | undefined;
    const outcome = await Promise.race([
      this.exited.then(() => 'exited' as const),
      new Promise<'timeout'>(
        (resolve) => (timer = setTimeout(() => resolve('timeout'), timeoutMs)),
      ),
    ]);
    clearTimeout(timer);
    signalGroup(this.pid, 'SIGKILL');
    if (outcome === 'timeout') {
      await this.exited;
      return 'killed';
    }
    return 'exited';
  }

  exitDescription(): string {
    const exit = this.exitInfo;
    if (!exit) return 'running';
    return exit.signal
      ? `killed by ${exit.signal}`
      : exit.code === null
        ? 'gone'
        : `exit code ${exit.code}`;
  }
}
