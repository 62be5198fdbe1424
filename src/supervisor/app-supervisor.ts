import { BatonError, errorMessage } from '../errors.js';
import { report, type Reporter } from '../protocol/events.js';
import { AppLauncher, type AppRuntime } from './app-launcher.js';
import { AppSecrets } from './app-secrets.js';
import { appStatus } from './app-status.js';
import { type AppStatus, type DeployResult, type Release } from '../protocol/results.js';
import type { AppConfig } from '../protocol/app-schema.js';
import { readEnvFile, secretValues } from './env-file.js';
import { Generation } from './generation.js';
import { checkReleaseDir } from './generation-launch.js';
import { configForRelease } from './release-config.js';
import { closeAll, openListener, type Listener } from './listeners.js';
import { RestartBackoff } from './restart-backoff.js';
import type { StateFile } from './state.js';

/** What a supervisor is doing: one thing at a time. */
type Activity =
  | { kind: 'idle' }
  /** The first generation when the agent starts (or starts it again after a failure). */
  | { kind: 'starting' }
  /** A deploy, reload or rollback, by its id. */
  | { kind: 'deploying'; id: string }
  /** Restarting after a crash; `waiting` while in the backoff, when a deploy may cut in. */
  | { kind: 'restarting'; waiting: boolean };

/** Whether the supervisor acts on its generations: not once stopped or handed to a successor. */
type Lifecycle = 'supervising' | 'detached' | 'stopped';

function describeActivity(activity: Activity): string {
  switch (activity.kind) {
    case 'idle':
      return 'nothing';
    case 'starting':
      return 'initial start';
    case 'deploying':
      return activity.id;
    case 'restarting':
      return 'crash restart';
  }
}

/**
 * Runs one app: owns its listeners, starts generations, hands over from one to the next, and
 * restarts a crashed one. One deploy at a time; every step is reported.
 */
export class AppSupervisor {
  private current: Generation | undefined;
  private activity: Activity = { kind: 'idle' };
  private lifecycle: Lifecycle = 'supervising';
  /** A restart is owed: nothing serves, or what served crashed (taken up once a deploy ends). */
  private restartPending = false;
  private restarts = 0;
  /** The deploy or restart under way, so that stop() can let it settle first. */
  private inflight: Promise<unknown> = Promise.resolve();
  private readonly backoff: RestartBackoff;
  private lastError: string | undefined;
  private readonly secrets = new AppSecrets();
  private readonly reporter: Reporter;
  private readonly launcher: AppLauncher;
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
    this.backoff = new RestartBackoff(app.restart);
    this.secrets.remember(secretValues(app.secretEnv, app.env));
    // Every event of this app passes here: a secret's value never reaches a log or a client.
    this.reporter = (event) => reporter(this.secrets.maskEvent(event));
    this.launcher = new AppLauncher(app, runtime, this.secrets, this.reporter);
  }

  private get busy(): boolean {
    return this.activity.kind !== 'idle';
  }

  /** Whether generation exits are acted on (not stopped, not handed to another agent). */
  private get supervising(): boolean {
    return this.lifecycle === 'supervising';
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
    return appStatus({
      app: this.app,
      state:
        this.lifecycle === 'stopped'
          ? 'stopped'
          : this.restartPending
            ? 'restarting'
            : this.busy
              ? 'deploying'
              : gen && !gen.hasExited
                ? 'running'
                : this.lastError
                  ? 'failed'
                  : 'starting',
      release: st.current,
      previous: st.previous,
      generation: gen,
      listeners: this.listeners,
      deploy: this.busy ? describeActivity(this.activity) : undefined,
      restarts: this.restarts,
      lastError: this.lastError,
      mask: (text) => this.secrets.mask(text),
      user: this.runtime.runAs?.user,
    });
  }

  /** Takes back a running generation from the state file; false when there is none alive. */
  async adopt(): Promise<boolean> {
    const record = this.appState.generation;
    if (!record) return false;
    const app = await configForRelease(this.app, record.releaseDir).catch(() => this.app);
    // Its output is masked like a generation this agent started (preflight read the file already).
    if (app.envFile)
      this.secrets.remember(
        secretValues(app.secretEnv, await readEnvFile(app.envFile).catch(() => ({}))),
      );
    const gen = await Generation.adopt(app, record, this.reporter, {
      setup: '',
      exec: 'exec',
      switchesUser: false,
      env: {},
      owner: this.runtime.runAs && { uid: this.runtime.runAs.uid, gid: this.runtime.runAs.gid },
      runDir: this.runtime.runDir,
      masker: () => this.secrets.masker,
    });
    if (!gen) return false;
    this.answerEventsOf(gen);
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
    this.activity = { kind: 'starting' };
    try {
      await checkReleaseDir(release.dir);
      await this.launcher.linkShared(release.dir);
      await this.launcher.hook('start', release.dir, release.id, this.appState.previous?.id);
      const gen = await this.launch(release);
      await this.promote(gen, release, false);
    } catch (err) {
      this.failed(release, err);
      throw this.secrets.maskError(err);
    } finally {
      this.activity = { kind: 'idle' };
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
      while (this.supervising && !serving()) {
        const release = this.appState.current ?? this.configuredRelease();
        if (!release) return;
        await this.backoff.sleep(this.backOff(release, 'start again in'));
        if (!this.supervising || serving() || this.busy) continue;
        // Reported by start(), which records the error for status.
        await this.start().catch(() => undefined);
      }
    })();
  }

  /** The wait before the next try (doubling the one after it, up to the maximum), reported. */
  private backOff(release: Release, when: string): number {
    const wait = this.backoff.next();
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
    if (this.activity.kind === 'restarting' && this.activity.waiting) {
      // A deploy (a fix, a rollback) goes before waiting to restart what keeps failing; if it
      // fails too, the restarts resume.
      this.restartPending = false;
      this.backoff.interrupt();
      await this.inflight;
    }
    if (this.busy)
      throw new BatonError(
        'DEPLOY_BUSY',
        `busy: ${describeActivity(this.activity)} of ${this.app.name} in progress; try again when it ends`,
      );
    if (this.lifecycle === 'stopped')
      throw new BatonError('APP_UNKNOWN', `app ${this.app.name} is stopped`);
    if (!this.supervising)
      throw new BatonError(
        'DEPLOY_BUSY',
        `busy: the agent is handing ${this.app.name} over to a new agent process; deploy again once the upgrade ends`,
      );
    this.activity = { kind: 'deploying', id: deployId };
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
      await this.launcher.launchFor(await configForRelease(this.app, release.dir));
      await this.launcher.linkShared(release.dir);
      await this.launcher.hook('beforeRestart', release.dir, release.id, previous?.id);
      const cold = this.listeners === undefined;
      let drained: DeployResult['drained'] = 'none';
      if (cold && old) drained = await this.drain(old);
      if (cold) this.listeners = await Promise.all(this.app.listeners.map((l) => openListener(l)));
      const gen = await this.launch(release);
      await this.promote(gen, release, true);
      if (old && !cold) drained = await this.drain(old);
      await this.launcher
        .hook('afterRestart', release.dir, release.id, previous?.id)
        .catch((err: unknown) => {
          this.lastError = errorMessage(err);
        });
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
      throw this.secrets.maskError(err);
    } finally {
      this.activity = { kind: 'idle' };
      // Nothing serving after this deploy (a cold switch that failed, a crash meanwhile): restart.
      if (!this.current || this.current.hasExited) this.restartPending = true;
      if (this.restartPending && this.lifecycle !== 'stopped') this.inflight = this.restartLoop();
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
    this.lifecycle = 'stopped';
    this.backoff.interrupt();
    // A deploy under way ends on its own deadlines; stopping halfway would orphan a generation.
    await this.inflight;
    const gen = this.current;
    if (gen) await this.drain(gen);
    const release = this.appState.current;
    if (release)
      await this.launcher
        .hook('stop', release.dir, release.id, this.appState.previous?.id)
        .catch(() => undefined);
    await this.state.update((s) => {
      delete s.apps[this.app.name]?.generation;
    });
    closeAll(this.listeners ?? []);
    report(this.reporter, { type: 'phase', app: this.app.name, phase: 'stopped' });
  }

  /** Stops reacting to generation exits, leaving them running (for an agent upgrade). */
  detach(): void {
    if (this.lifecycle === 'supervising') this.lifecycle = 'detached';
    this.backoff.interrupt();
  }

  /** Leaves the app to a successor agent: its generation runs on, this process lets go of it. */
  async handOff(): Promise<void> {
    if (this.lifecycle === 'supervising') this.lifecycle = 'detached';
    await this.current?.handOff();
    closeAll(this.listeners ?? [], true);
  }

  resume(): void {
    if (this.lifecycle === 'detached') this.lifecycle = 'supervising';
    if (this.current?.hasExited) this.scheduleRestart();
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
      launch: await this.launcher.launchFor(app),
    });
    this.answerEventsOf(gen);
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
  private answerEventsOf(gen: Generation): void {
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
    if (gen !== this.current || this.busy || !this.supervising) return;
    if (Date.now() - this.memoryRestartFailedAt < this.app.restart.maxBackoffMs) return;
    await this.reload('memory ceiling restart').catch((err: unknown) => {
      this.memoryRestartFailedAt = Date.now();
      this.lastError = `memory ceiling restart failed: ${errorMessage(this.secrets.maskError(err))}`;
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

  /** Remembers and reports why starting `release` failed. */
  private failed(release: Release, err: unknown): void {
    err = this.secrets.maskError(err);
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
      if (gen !== this.current || gen.isStopping || !this.supervising) return;
      report(this.reporter, {
        type: 'phase',
        app: this.app.name,
        phase: 'crashed',
        generation: gen.number,
        pid: gen.pid,
        detail: gen.exitDescription(),
      });
      const servedMs = Date.now() - Date.parse(gen.record.startedAt);
      if (servedMs >= this.app.restart.resetAfterMs) this.backoff.reset();
      this.scheduleRestart();
    });
  }

  private scheduleRestart(): void {
    this.restartPending = true;
    if (!this.busy) this.inflight = this.restartLoop();
  }

  /** Restarts the current release with growing backoff until a generation is ready; listeners stay open meanwhile. */
  private async restartLoop(): Promise<void> {
    if (this.busy) return;
    this.activity = { kind: 'restarting', waiting: false };
    try {
      while (this.restartPending && this.supervising) {
        // A deploy that ran meanwhile may have put a live generation in place already.
        if (this.current && !this.current.hasExited) {
          this.restartPending = false;
          return;
        }
        const release = this.appState.current ?? this.configuredRelease();
        if (!release) return;
        const wait = this.backOff(release, 'in');
        this.activity = { kind: 'restarting', waiting: true };
        await this.backoff.sleep(wait);
        this.activity = { kind: 'restarting', waiting: false };
        if (!this.supervising || !this.restartPending) return;
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
      this.activity = { kind: 'idle' };
    }
  }
}
