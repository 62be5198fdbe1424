import { BatonError, errorMessage } from '../errors.js';
import { report, type Reporter, type SupervisorEvent } from '../protocol/events.js';
import type { AppConfig } from './config.js';
import { readEnvFile, SecretMasker, secretValues } from './env-file.js';
import { checkReleaseDir, Generation, type Launch, type Release } from './generation.js';
import { MAX_STATUS } from './notify-socket.js';
import { accountEnv, launchShell, type RunAs } from './privilege.js';
import { linkShared, prepareShared } from './shared-paths.js';
import { runHook, type HookName } from './hooks.js';
import { configForRelease } from './release-config.js';
import { closeAll, describeListener, openListener, type Listener } from './listeners.js';
import type { StateFile } from './state.js';

/** Where an app runs, worked out once when the agent starts (see preflight.ts). */
export interface AppRuntime {
  /** Who its generations and hooks run as; undefined: the agent's own user. */
  runAs: RunAs | undefined;
  /** Directory of per-generation notify sockets. */
  runDir: string;
  /** The app's shared area, linked into every release. */
  sharedRoot: string;
}

export interface AppStatus {
  name: string;
  state: 'running' | 'starting' | 'deploying' | 'restarting' | 'stopped' | 'failed';
  release: Release | undefined;
  previous: Release | undefined;
  generation: { number: number; pid: number; releaseId: string; startedAt: string } | undefined;
  listeners: {
    name: string;
    address: string;
    fd: number | undefined;
    origin: string | undefined;
  }[];
  /** Set when the agent does not hold the listeners (re-adopted after a crash without socket activation). */
  warning: string | undefined;
  deploy: string | undefined;
  restarts: number;
  lastError: string | undefined;
  /** The last `STATUS=` the serving generation sent (systemd readiness). */
  notifyStatus: string | undefined;
  /** The user its generations run as, when not the agent's own. */
  user: string | undefined;
}

export interface DeployResult {
  app: string;
  releaseId: string;
  generation: number;
  previousReleaseId: string | undefined;
  drained: 'exited' | 'killed' | 'none';
  cold: boolean;
  durationMs: number;
}

/**
 * Runs one app: owns its listeners, starts generations, hands over from one to the next, and
 * restarts a crashed one. One deploy at a time; every step is reported.
 */
export class AppSupervisor {
  private current: Generation | undefined;
  private deploying: string | undefined;
  private restartPending = false;
  private restarts = 0;
  /** The deploy or restart under way, so that stop() can let it settle first. */
  private inflight: Promise<unknown> = Promise.resolve();
  private restartWaiting = false;
  /** Ends the current backoff wait early. */
  private wake: (() => void) | undefined;
  private backoffMs: number;
  private lastError: string | undefined;
  private stopped = false;
  private supervising = true;
  /** Masks the values of `secretEnv` keys; rebuilt each time the env file is read. */
  private masker = new SecretMasker([]);
  private readonly reporter: Reporter;
  /** When a restart for the memory ceiling last failed, so it is not retried at every sample. */
  private memoryRestartFailedAt = 0;

  constructor(
    readonly app: AppConfig,
    /** Undefined when another process (an orphaned generation) holds them: deploys are then cold. */
    private listeners: Listener[] | undefined,
    private readonly state: StateFile,
    private readonly logDir: string,
    reporter: Reporter,
    private readonly runtime: AppRuntime,
  ) {
    this.backoffMs = app.restart.initialBackoffMs;
    this.rememberSecrets(secretValues(app.secretEnv, app.env));
    // Every event of this app passes here: a secret's value never reaches a log or a client.
    this.reporter = (event) => reporter(this.maskEvent(event));
  }

  /**
   * Secret values are never forgotten while the agent runs: a generation started before the env
   * file changed still holds (and may print) the old value.
   */
  private readonly secrets = new Set<string>();
  private rememberSecrets(values: readonly string[]): void {
    const before = this.secrets.size;
    for (const v of values) if (this.secrets.size < 10_000) this.secrets.add(v);
    if (this.secrets.size !== before) this.masker = new SecretMasker(this.secrets);
  }

  private maskEvent(event: SupervisorEvent): SupervisorEvent {
    if (!this.masker.active) return event;
    if (event.type === 'log') return { ...event, line: this.masker.mask(event.line) };
    return event.detail === undefined
      ? event
      : { ...event, detail: this.masker.mask(event.detail) };
  }

  /** The same error with secrets masked in its message and lines. */
  private maskError(err: unknown): unknown {
    if (!this.masker.active || !(err instanceof BatonError)) return err;
    const masked = new BatonError(
      err.code,
      this.masker.mask(err.message),
      err.lines?.map((l) => this.masker.mask(l)),
    );
    return masked;
  }

  /**
   * What a start of `app` (a generation or a hook) runs with: the env file read again now, the
   * app's user, umask and limits. A bad env file fails the start, with nothing stopped.
   */
  private async launchFor(app: AppConfig): Promise<Launch> {
    const fileEnv = app.envFile ? await readEnvFile(app.envFile) : {};
    this.rememberSecrets(secretValues(app.secretEnv, app.env, fileEnv));
    const { runAs, runDir } = this.runtime;
    return {
      ...launchShell(runAs, app),
      env: { ...fileEnv, ...accountEnv(runAs) },
      owner: runAs && { uid: runAs.uid, gid: runAs.gid },
      runDir,
      masker: () => this.masker,
    };
  }

  /** Creates what is missing of the shared area and links it into the release, before its hooks. */
  private async linkShared(dir: string): Promise<void> {
    const { shared } = this.app;
    if (shared.dirs.length === 0 && shared.files.length === 0) return;
    const { runAs, sharedRoot } = this.runtime;
    await prepareShared(sharedRoot, shared, runAs && { uid: runAs.uid, gid: runAs.gid });
    await linkShared(dir, sharedRoot, shared);
  }

  private get appState() {
    return this.state.app(this.app.name);
  }

  get listenerFds(): readonly Listener[] {
    return this.listeners ?? [];
  }

  status(): AppStatus {
    const st = this.appState;
    const gen = this.current;
    return {
      name: this.app.name,
      state: this.stopped
        ? 'stopped'
        : this.restartPending
          ? 'restarting'
          : this.deploying
            ? 'deploying'
            : gen && !gen.hasExited
              ? 'running'
              : this.lastError
                ? 'failed'
                : 'starting',
      release: st.current,
      previous: st.previous,
      generation: gen
        ? {
            number: gen.number,
            pid: gen.pid,
            releaseId: gen.releaseId,
            startedAt: gen.record.startedAt,
          }
        : undefined,
      listeners: this.app.listeners.map((cfg) => {
        const held = this.listeners?.find((l) => l.name === cfg.name);
        return {
          name: cfg.name,
          address: held?.address ?? describeListener(cfg),
          fd: held?.fd,
          origin: held?.origin,
        };
      }),
      warning: this.listeners
        ? undefined
        : `the agent does not hold ${this.app.name}'s listeners: generation ${gen?.number ?? '?'} (pid ${gen?.pid ?? '?'}) ` +
          `kept them when the previous agent died. The next deploy will be a cold switch (old stopped before the new one ` +
          `starts: connections are refused for about the new version's start-up time). Run the agent under systemd socket ` +
          `activation, and use "baton agent upgrade" to replace it, to avoid this.`,
      deploy: this.deploying,
      restarts: this.restarts,
      lastError: this.lastError,
      notifyStatus:
        gen && !gen.hasExited && gen.statusText !== undefined
          ? this.masker.mask(gen.statusText).slice(0, MAX_STATUS)
          : undefined,
      user: this.runtime.runAs?.user,
    };
  }

  /** Takes back a running generation from the state file; false when there is none alive. */
  async adopt(): Promise<boolean> {
    const record = this.appState.generation;
    if (!record) return false;
    const app = await configForRelease(this.app, record.releaseDir).catch(() => this.app);
    // Its output is masked like a generation this agent started (preflight read the file already).
    if (app.envFile)
      this.rememberSecrets(
        secretValues(app.secretEnv, await readEnvFile(app.envFile).catch(() => ({}))),
      );
    const gen = await Generation.adopt(app, record, this.reporter, {
      setup: '',
      exec: 'exec',
      switchesUser: false,
      env: {},
      owner: this.runtime.runAs && { uid: this.runtime.runAs.uid, gid: this.runtime.runAs.gid },
      runDir: this.runtime.runDir,
      masker: () => this.masker,
    });
    if (!gen) return false;
    this.listen(gen);
    this.current = gen;
    this.watch(gen);
    report(this.reporter, {
      type: 'phase',
      app: this.app.name,
      phase: 'adopted',
      generation: gen.number,
      releaseId: gen.releaseId,
      pid: gen.pid,
      detail: this.listeners ? undefined : 'listeners not held by the agent; next deploy is cold',
    });
    return true;
  }

  /** Starts the first generation from the state's current release or the configured one. */
  async start(): Promise<void> {
    const release = this.appState.current ?? this.configuredRelease();
    if (!release) {
      const err = new BatonError(
        'NO_RELEASE',
        `app ${this.app.name} has no release yet: set "release" in its config or deploy one`,
      );
      this.lastError = err.message;
      report(this.reporter, {
        type: 'phase',
        app: this.app.name,
        phase: 'failed',
        code: err.code,
        detail: err.message,
      });
      throw err;
    }
    this.deploying = 'initial start';
    try {
      await checkReleaseDir(release.dir);
      await this.linkShared(release.dir);
      await this.hook('start', release.dir, release.id, this.appState.previous?.id);
      const gen = await this.launch(release);
      await this.promote(gen, release, false);
    } catch (err) {
      this.failed(release, err);
      throw this.maskError(err);
    } finally {
      this.deploying = undefined;
    }
  }

  /**
   * After a start that failed (the agent's other apps run on): starts again with the crash
   * backoff, hooks and all, until a generation serves (a deploy may bring one first), the app
   * is stopped or handed to another agent, or there is no release to start.
   */
  retryStart(): void {
    this.inflight = (async () => {
      const serving = () => this.current !== undefined && !this.current.hasExited;
      while (!this.stopped && this.supervising && !serving()) {
        const release = this.appState.current ?? this.configuredRelease();
        if (!release) return;
        await this.sleep(this.backOff(release, 'start again in'));
        if (this.stopped || !this.supervising || serving() || this.deploying) continue;
        // Reported by start(), which records the error for status.
        await this.start().catch(() => undefined);
      }
    })();
  }

  /** The wait before the next try (doubling the one after it, up to the maximum), reported. */
  private backOff(release: Release, when: string): number {
    const wait = this.backoffMs;
    this.backoffMs = Math.min(Math.max(wait * 2, 1), this.app.restart.maxBackoffMs);
    report(this.reporter, {
      type: 'phase',
      app: this.app.name,
      phase: 'restarting',
      releaseId: release.id,
      detail: `${when} ${wait} ms`,
    });
    return wait;
  }

  private configuredRelease(): Release | undefined {
    if (this.app.release === undefined) return undefined;
    return {
      id: this.app.releaseId ?? this.app.release.split('/').filter(Boolean).pop()!,
      dir: this.app.release,
    };
  }

  /** Hands over to a new generation of `release`; the old one serves until the new one is ready. */
  async deploy(release: Release, deployId = `deploy ${release.id}`): Promise<DeployResult> {
    if (this.deploying === 'crash restart' && this.restartWaiting) {
      // A deploy (a fix, a rollback) goes before waiting to restart what keeps failing; if it
      // fails too, the restarts resume.
      this.restartPending = false;
      this.wake?.();
      await this.inflight;
    }
    if (this.deploying)
      throw new BatonError(
        'DEPLOY_BUSY',
        `busy: ${this.deploying} of ${this.app.name} in progress; try again when it ends`,
      );
    if (this.stopped) throw new BatonError('APP_UNKNOWN', `app ${this.app.name} is stopped`);
    if (!this.supervising)
      throw new BatonError(
        'DEPLOY_BUSY',
        `busy: the agent is handing ${this.app.name} over to a new agent process; deploy again once the upgrade ends`,
      );
    this.deploying = deployId;
    const run = this.runDeploy(release);
    this.inflight = run.catch(() => undefined);
    return run;
  }

  private async runDeploy(release: Release): Promise<DeployResult> {
    const started = Date.now();
    try {
      await checkReleaseDir(release.dir);
      const old = this.current && !this.current.hasExited ? this.current : undefined;
      const previous = this.appState.current;
      // The env file is read before anything runs: a bad one stops the deploy here.
      await this.launchFor(await configForRelease(this.app, release.dir));
      await this.linkShared(release.dir);
      await this.hook('beforeRestart', release.dir, release.id, previous?.id);
      const cold = this.listeners === undefined;
      let drained: DeployResult['drained'] = 'none';
      if (cold && old) drained = await this.drain(old);
      if (cold) this.listeners = await Promise.all(this.app.listeners.map((l) => openListener(l)));
      const gen = await this.launch(release);
      await this.promote(gen, release, true);
      if (old && !cold) drained = await this.drain(old);
      await this.hook('afterRestart', release.dir, release.id, previous?.id).catch(
        (err: unknown) => {
          this.lastError = errorMessage(err);
        },
      );
      const durationMs = Date.now() - started;
      report(this.reporter, {
        type: 'phase',
        app: this.app.name,
        phase: 'done',
        generation: gen.number,
        releaseId: release.id,
        durationMs,
      });
      return {
        app: this.app.name,
        releaseId: release.id,
        generation: gen.number,
        previousReleaseId: previous?.id,
        drained,
        cold,
        durationMs,
      };
    } catch (err) {
      this.failed(release, err);
      throw this.maskError(err);
    } finally {
      this.deploying = undefined;
      // Nothing serving after this deploy (a cold switch that failed, a crash meanwhile): restart.
      if (!this.current || this.current.hasExited) this.restartPending = true;
      if (this.restartPending && !this.stopped) this.inflight = this.restartLoop();
    }
  }

  /** Hot restart of the current release through the same handover. */
  async reload(why = 'reload'): Promise<DeployResult> {
    const release = this.appState.current ?? this.configuredRelease();
    if (!release)
      throw new BatonError('NO_RELEASE', `app ${this.app.name} has no release to reload`);
    return this.deploy(release, `${why} of ${release.id}`);
  }

  /** Drains the serving generation, runs the stop hook and closes the listeners. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    // A deploy under way ends on its own deadlines; stopping halfway would orphan a generation.
    await this.inflight;
    const gen = this.current;
    if (gen) await this.drain(gen);
    const release = this.appState.current;
    if (release)
      await this.hook('stop', release.dir, release.id, this.appState.previous?.id).catch(
        () => undefined,
      );
    await this.state.update((s) => {
      delete s.apps[this.app.name]?.generation;
    });
    closeAll(this.listeners ?? []);
    report(this.reporter, { type: 'phase', app: this.app.name, phase: 'stopped' });
  }

  /** Stops reacting to generation exits, leaving them running (for an agent upgrade). */
  detach(): void {
    this.supervising = false;
    this.wake?.();
  }

  /** Leaves the app to a successor agent: its generation runs on, this process lets go of it. */
  async handOff(): Promise<void> {
    this.supervising = false;
    await this.current?.release();
    closeAll(this.listeners ?? [], true);
  }

  resume(): void {
    this.supervising = true;
    if (this.current?.hasExited) this.scheduleRestart();
  }

  /** `previousReleaseId` is the release a deploy moves away from (for beforeRestart and afterRestart alike). */
  private async hook(
    name: HookName,
    cwd: string,
    releaseId: string | undefined,
    previousReleaseId: string | undefined,
  ): Promise<void> {
    // The hooks of the release concerned (its baton.yml may bring its own); cwd is that release.
    const app = await configForRelease(this.app, cwd);
    if (!app.hooks[name]) return;
    await runHook(name, app.hooks[name], {
      app,
      launch: await this.launchFor(app),
      cwd,
      releaseId,
      previousReleaseId,
      reporter: this.reporter,
    });
  }

  /** Starts a generation and waits for it to be ready; on failure it is killed and the error carries its last lines. */
  private async launch(release: Release): Promise<Generation> {
    const number = this.appState.nextGeneration;
    await this.state.update(() => {
      this.appState.nextGeneration = number + 1;
    });
    const app = await configForRelease(this.app, release.dir);
    const gen = await Generation.start({
      app,
      number,
      release,
      listeners: this.listeners ?? [],
      logDir: this.logDir,
      previousReleaseId: this.appState.current?.id,
      reporter: this.reporter,
      launch: await this.launchFor(app),
    });
    this.listen(gen);
    try {
      await gen.waitReady();
    } catch (err) {
      // A generation that missed its deadline may already have accepted connections on the
      // shared socket: ask it to drain them like any old generation (SIGKILL at the deadline).
      await gen.stop(
        err instanceof BatonError && err.code === 'READINESS_TIMEOUT' ? 'drain' : 'abort',
      );
      throw err;
    }
    report(this.reporter, {
      type: 'phase',
      app: this.app.name,
      phase: 'ready',
      generation: number,
      releaseId: release.id,
      pid: gen.pid,
    });
    return gen;
  }

  /** What a generation asks of its supervisor: save a new main pid, restart over the memory ceiling. */
  private listen(gen: Generation): void {
    gen.events = {
      mainChanged: (g) => {
        if (g === this.current)
          void this.state
            .update(() => {
              this.appState.generation = g.record;
            })
            .catch(() => undefined);
      },
      overMemory: (g) => void this.memoryRestart(g),
    };
  }

  /**
   * A generation over `limits.memoryBytes` is replaced through the same handover as a deploy: the
   * new one starts, becomes ready, then the old one drains. Nothing is refused meanwhile.
   */
  private async memoryRestart(gen: Generation): Promise<void> {
    if (gen !== this.current || this.deploying || this.stopped || !this.supervising) return;
    if (Date.now() - this.memoryRestartFailedAt < this.app.restart.maxBackoffMs) return;
    await this.reload('memory ceiling restart').catch((err: unknown) => {
      this.memoryRestartFailedAt = Date.now();
      this.lastError = `memory ceiling restart failed: ${errorMessage(this.maskError(err))}`;
    });
  }

  /** Makes a ready generation the serving one and records it. */
  private async promote(gen: Generation, release: Release, moveCurrent: boolean): Promise<void> {
    const st = this.appState;
    const saved = { current: st.current, previous: st.previous, generation: st.generation };
    try {
      await this.state.update(() => {
        if (moveCurrent && saved.current && saved.current.id !== release.id)
          st.previous = saved.current;
        st.current = release;
        st.generation = gen.record;
      });
    } catch (err) {
      // Not recorded, not switched: the new generation goes, the old one (if any) serves on.
      Object.assign(st, saved);
      await gen.stop('drain');
      throw err;
    }
    this.current = gen;
    this.lastError = undefined;
    report(this.reporter, {
      type: 'phase',
      app: this.app.name,
      phase: 'switched',
      generation: gen.number,
      releaseId: release.id,
      pid: gen.pid,
    });
    this.watch(gen);
  }

  /** A backoff wait that stop() can cut short. */
  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.wake = undefined;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wake = done;
    });
  }

  /** Remembers and reports why starting `release` failed. */
  private failed(release: Release, err: unknown): void {
    err = this.maskError(err);
    this.lastError = errorMessage(err);
    report(this.reporter, {
      type: 'phase',
      app: this.app.name,
      phase: 'failed',
      releaseId: release.id,
      detail: errorMessage(err),
      code: err instanceof BatonError ? err.code : undefined,
    });
  }

  private async drain(gen: Generation): Promise<'exited' | 'killed'> {
    const started = Date.now();
    report(this.reporter, {
      type: 'phase',
      app: this.app.name,
      phase: 'draining',
      generation: gen.number,
      pid: gen.pid,
    });
    const outcome = await gen.stop('drain');
    report(this.reporter, {
      type: 'phase',
      app: this.app.name,
      phase: 'drained',
      generation: gen.number,
      durationMs: Date.now() - started,
      detail:
        outcome === 'killed'
          ? `did not exit within ${gen.app.drain.timeoutMs} ms: killed`
          : gen.exitDescription(),
    });
    return outcome;
  }

  private watch(gen: Generation): void {
    void gen.exited.then(() => {
      if (gen !== this.current || gen.isStopping || this.stopped || !this.supervising) return;
      report(this.reporter, {
        type: 'phase',
        app: this.app.name,
        phase: 'crashed',
        generation: gen.number,
        pid: gen.pid,
        detail: gen.exitDescription(),
      });
      const servedMs = Date.now() - Date.parse(gen.record.startedAt);
      if (servedMs >= this.app.restart.resetAfterMs)
        this.backoffMs = this.app.restart.initialBackoffMs;
      this.scheduleRestart();
    });
  }

  private scheduleRestart(): void {
    this.restartPending = true;
    if (!this.deploying) this.inflight = this.restartLoop();
  }

  /** Restarts the current release with growing backoff until a generation is ready; listeners stay open meanwhile. */
  private async restartLoop(): Promise<void> {
    if (this.deploying) return;
    this.deploying = 'crash restart';
    try {
      while (this.restartPending && !this.stopped && this.supervising) {
        // A deploy that ran meanwhile may have put a live generation in place already.
        if (this.current && !this.current.hasExited) {
          this.restartPending = false;
          return;
        }
        const release = this.appState.current ?? this.configuredRelease();
        if (!release) return;
        const wait = this.backOff(release, 'in');
        this.restartWaiting = true;
        await this.sleep(wait);
        this.restartWaiting = false;
        if (this.stopped || !this.supervising || !this.restartPending) return;
        try {
          if (!this.listeners)
            this.listeners = await Promise.all(this.app.listeners.map((l) => openListener(l)));
          const gen = await this.launch(release);
          this.restarts++;
          this.restartPending = false;
          await this.promote(gen, release, false);
        } catch (err) {
          this.failed(release, err);
        }
      }
    } finally {
      this.deploying = undefined;
    }
  }
}
