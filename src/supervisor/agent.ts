import { chmod, chown, mkdir, open } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { SignedManifest } from '../protocol/manifest.js';
import { MAX_MANIFEST_BYTES, parseSignedManifest } from '../artifact/sign.js';
import { ReleaseStore, type GetOptions } from '../artifact/store.js';
import {
  type ReleaseInfo,
  type Release,
  type AgentStatus,
  type DeployResult,
  type StoreDeployResult,
} from '../protocol/results.js';
import { BatonError, errorCode, errorMessage } from '../errors.js';
import { report, type Reporter, type SupervisorEvent } from '../protocol/events.js';
import { preflight } from './preflight.js';
import type { AppRuntime } from './app-launcher.js';
import { AppSupervisor } from './app-supervisor.js';
import type { AgentConfig } from '../protocol/agent-config.js';
import type { AppConfig } from '../protocol/app-schema.js';
import { fdName } from './activation.js';
import { agentPaths, type AgentPaths } from './agent-paths.js';
import { spawnSuccessor, type Successor } from './successor.js';
import { adoptListener, closeAll, inheritedFds, openListener, type Listener } from './listeners.js';
import { isAlive } from './process-util.js';
import { StateFile } from './state.js';

async function readSignedManifest(file: string): Promise<SignedManifest> {
  const handle = await open(file, 'r').catch((err: unknown) => {
    throw new BatonError('MANIFEST_INVALID', `cannot read manifest ${file}: ${errorMessage(err)}`);
  });
  try {
    if ((await handle.stat()).size > MAX_MANIFEST_BYTES)
      throw new BatonError(
        'MANIFEST_INVALID',
        `${file} is larger than ${MAX_MANIFEST_BYTES} bytes: not a manifest`,
      );
    let raw: unknown;
    try {
      raw = JSON.parse(await handle.readFile('utf8'));
    } catch (err) {
      throw new BatonError('MANIFEST_INVALID', `${file}: not JSON: ${errorMessage(err)}`);
    }
    return parseSignedManifest(raw, file);
  } finally {
    await handle.close();
  }
}

/**
 * The agent: one AppSupervisor per configured app, the listeners they own, and the state that
 * lets a restarted or upgraded agent find its generations again.
 */
export class Agent {
  readonly paths: AgentPaths;
  private readonly apps = new Map<string, AppSupervisor>();
  private readonly stores = new Map<string, ReleaseStore>();
  private readonly subscribers = new Set<Reporter>();
  private readonly state: StateFile;
  private readonly startedAt = new Date().toISOString();
  /** Set by whoever runs the channel, so status can show its port and socket. */
  channelPort: () => number | undefined = () => undefined;
  channelSocket: () => string | undefined = () => undefined;

  constructor(
    readonly config: AgentConfig,
    readonly configFile: string,
    private readonly log: Reporter,
    private readonly env: NodeJS.ProcessEnv = process.env,
    /** From preflight(), which runAgent calls before anything else; worked out in start() otherwise. */
    private runtimes?: Map<string, AppRuntime>,
  ) {
    this.paths = agentPaths(config.stateDir);
    this.state = new StateFile(this.paths.stateFile);
  }

  /** Every event goes to the agent's log and to whoever listens (a control client during a deploy). */
  readonly reporter: Reporter = (event: SupervisorEvent) => {
    this.log(event);
    for (const fn of this.subscribers) fn(event);
  };

  subscribe(fn: Reporter): () => void {
    this.subscribers.add(fn);
    return () => this.subscribers.delete(fn);
  }

  /** Opens (or takes over) every listener, then adopts running generations or starts new ones. */
  async start(): Promise<void> {
    const runtimes = (this.runtimes ??= await preflight(this.config));
    await mkdir(this.config.stateDir, { recursive: true, mode: 0o711 });
    // mkdir leaves an existing directory as it was. Others may pass through (an app's user
    // reaches its releases, shared area and notify socket) but not list it; what is private
    // here (state, control socket, logs, audit) is 0600 or 0700 itself.
    await chmod(this.config.stateDir, 0o711);
    await mkdir(this.paths.logDir, { recursive: true, mode: 0o700 });
    await mkdir(path.join(this.config.stateDir, 'apps'), { recursive: true, mode: 0o711 });
    await chmod(path.join(this.config.stateDir, 'apps'), 0o711);
    // The stores first: the channel answers queries while the apps start, and an app it knows
    // has its store.
    for (const app of this.config.apps) {
      const store = new ReleaseStore({
        root: path.join(this.config.stateDir, 'apps', app.name),
        app: app.name,
        keep: app.keepReleases,
        trustedKeys: this.config.trustedKeys,
        allowUnsigned: this.config.allowUnsigned,
        maxArchiveBytes: app.maxArchiveBytes,
        limits: app.unpack,
      });
      await store.init();
      this.stores.set(app.name, store);
      // The app's folder is the agent's; its group may read (releases) and pass (shared area),
      // nobody else. Releases stay read-only to the app: written only by the agent.
      const runAs = runtimes.get(app.name)?.runAs;
      const appDir = path.join(this.config.stateDir, 'apps', app.name);
      if (runAs) await chown(appDir, process.getuid!(), runAs.gid);
      await chmod(appDir, runAs ? 0o750 : 0o700);
    }
    const saved = await this.state.load();
    const inherited = inheritedFds(this.env);
    const opened: Listener[] = [];
    try {
      for (const app of this.config.apps) {
        const record = saved.apps[app.name]?.generation;
        const orphan = record !== undefined && isAlive(record.pid);
        const listeners = await this.openListeners(app, inherited, orphan);
        if (listeners) opened.push(...listeners);
        this.apps.set(
          app.name,
          new AppSupervisor(
            app,
            listeners,
            this.state,
            this.paths.logDir,
            this.reporter,
            runtimes.get(app.name)!,
          ),
        );
      }
    } catch (err) {
      closeAll(opened);
      throw err;
    }
    // An app that cannot start (its release is gone, its hook fails, its shared area holds
    // what the app should not have put there) keeps none of the others from running, as systemd
    // starts each unit on its own: it is reported failed, with its error, and started again with
    // backoff (or by a deploy). Only when no app runs does the start fail. The same in an
    // upgrade (an app that failed under the old agent has no generation to lose), but a
    // generation that cannot be taken over fails it: the old agent then carries on with all.
    let firstError: unknown;
    const failed: AppSupervisor[] = [];
    for (const sup of this.apps.values()) {
      if (await sup.adopt()) continue;
      try {
        await sup.start();
      } catch (err) {
        firstError ??= err;
        failed.push(sup);
      }
    }
    if (failed.length === this.apps.size) throw firstError as Error;
    for (const sup of failed) sup.retryStart();
  }

  private async openListeners(
    app: AppConfig,
    inherited: Map<string, number>,
    orphan: boolean,
  ): Promise<Listener[] | undefined> {
    const listeners: Listener[] = [];
    try {
      for (const cfg of app.listeners) {
        const fd = inherited.get(fdName(app, cfg.name)) ?? inherited.get(cfg.name);
        listeners.push(fd !== undefined ? adoptListener(cfg, fd) : await openListener(cfg));
      }
      return listeners;
    } catch (err) {
      closeAll(listeners);
      // A generation left by a dead agent still holds the socket: adopt it, and say what it costs.
      if (orphan && errorCode(err) === 'LISTENER_IN_USE') return undefined;
      throw err;
    }
  }

  private supervisor(name: string): AppSupervisor {
    const sup = this.apps.get(name);
    if (!sup && this.config.apps.some((a) => a.name === name))
      throw new BatonError('APP_UNKNOWN', `${name} is not started yet; try again in a moment`);
    if (!sup)
      throw new BatonError(
        'APP_UNKNOWN',
        `no app "${name}" in this agent's config; known apps: ${[...this.apps.keys()].join(', ')}`,
      );
    return sup;
  }

  status(): AgentStatus {
    return {
      pid: process.pid,
      startedAt: this.startedAt,
      configFile: this.configFile,
      channelPort: this.channelPort(),
      channelSocket: this.channelSocket(),
      apps: [...this.apps.values()].map((s) => s.status()),
    };
  }

  deploy(app: string, release: Release): Promise<DeployResult> {
    return this.supervisor(app).deploy(release);
  }

  /**
   * Deploys an artifact from this host's disk: into the store (free when it has the digest),
   * verified, unpacked, then handed over like any release.
   */
  async deployArtifact(
    app: string,
    archive: string,
    manifestFile: string,
  ): Promise<StoreDeployResult> {
    const sup = this.supervisor(app);
    const store = this.stores.get(app)!;
    const signed = await readSignedManifest(manifestFile);
    const release = await store.add(archive, signed);
    return this.deployStored(sup, store, release.id, release.dir, true);
  }

  /**
   * Deploys an artifact a remote client sends. The signature is checked before any byte moves;
   * `source` is asked for the bytes only when the store lacks the digest. Each store stage is
   * reported as a phase, like the handover's own.
   */
  async deployReceived(
    app: string,
    signed: SignedManifest,
    source: (bytes: number) => Readable,
  ): Promise<StoreDeployResult & { uploadedBytes: number }> {
    // No busy check here: the supervisor decides when the release is ready, and it lets a
    // deploy go before a crash-restart loop (the fix for what keeps failing). A deploy truly
    // under way gets DEPLOY_BUSY from it; the stored release then waits for the retry.
    const release = await this.receive(app, signed, source);
    const result = await this.deployStored(
      this.supervisor(app),
      this.stores.get(app)!,
      release.id,
      release.dir,
      true,
    );
    return { ...result, uploadedBytes: release.uploadedBytes };
  }

  /**
   * Stages an artifact a remote client sends: the store part of {@link deployReceived} alone
   * (signature first, bytes asked for only when the store lacks the digest, verified, unpacked,
   * each reported as a phase), for a later {@link switchTo}. What runs is not touched; nothing is
   * marked failed or pruned.
   */
  async stageReceived(
    app: string,
    signed: SignedManifest,
    source: (bytes: number) => Readable,
  ): Promise<{ releaseId: string; uploadedBytes: number }> {
    const release = await this.receive(app, signed, source);
    return { releaseId: release.id, uploadedBytes: release.uploadedBytes };
  }

  /** An artifact a client sends, into the app's store, each store stage reported as a phase. */
  private receive(app: string, signed: SignedManifest, source: (bytes: number) => Readable) {
    this.supervisor(app);
    const releaseId = signed.manifest.releaseId;
    return this.stores
      .get(app)!
      .addFrom(signed, source, (phase, durationMs, detail) =>
        report(this.reporter, { type: 'phase', app, phase, releaseId, durationMs, detail }),
      );
  }

  /**
   * Hands over to a release the store holds (one staged before), checked as a rollback's is:
   * its signature against the keys trusted now, and one marked failed refused (no force here).
   * The release that serves already is refused with ALREADY_CURRENT.
   */
  async switchTo(app: string, to: string): Promise<StoreDeployResult> {
    const sup = this.supervisor(app);
    const store = this.stores.get(app)!;
    if (to === sup.status().release?.id)
      throw new BatonError(
        'ALREADY_CURRENT',
        `${to} is already the current release of ${app}: nothing to switch`,
      );
    const stored = await store.get(to);
    return this.deployStored(sup, store, stored.id, stored.dir, true);
  }

  /**
   * Hands over to the previous release (or a named one) that the host still has: no upload.
   * The store checks it as it is now (its signature against the keys trusted now, and whether
   * it failed: `force` takes a failed one all the same); what runs meanwhile is not touched.
   */
  async rollback(app: string, to?: string, opts: GetOptions = {}): Promise<StoreDeployResult> {
    const sup = this.supervisor(app);
    const store = this.stores.get(app)!;
    const { release: current, previous } = sup.status();
    const id = to ?? previous?.id;
    if (id === undefined)
      throw new BatonError(
        'RELEASE_UNKNOWN',
        `${app} has no previous release to roll back to; name one with --to`,
      );
    if (id === current?.id)
      throw new BatonError('RELEASE_UNKNOWN', `${id} is already the current release of ${app}`);
    let stored;
    try {
      stored = await store.get(id, opts);
    } catch (err) {
      // The previous release, deployed from a plain directory (`baton agent deploy --release`),
      // never went through the store: nobody signed it, so no key can revoke it, and it could
      // not be marked failed (it served until the current one replaced it). Whoever holds the
      // control socket put it there and could deploy it again directly; the channel reaches only
      // this one, the state's previous. A folder inside the store whose record is gone is not
      // such a release: refused, never switched to unchecked.
      if (errorCode(err) !== 'RELEASE_UNKNOWN' || previous?.id !== id || store.holds(previous.dir))
        throw err;
      return this.deployStored(sup, store, previous.id, previous.dir, false);
    }
    return this.deployStored(sup, store, stored.id, stored.dir, true);
  }

  async releases(app: string): Promise<ReleaseInfo[]> {
    const { release, previous } = this.supervisor(app).status();
    return this.stores.get(app)!.list(release?.id, previous?.id);
  }

  private async deployStored(
    sup: AppSupervisor,
    store: ReleaseStore,
    id: string,
    dir: string,
    inStore: boolean,
  ): Promise<StoreDeployResult> {
    let result: DeployResult;
    try {
      result = await sup.deploy({ id, dir });
    } catch (err) {
      if (inStore && errorCode(err) !== 'DEPLOY_BUSY')
        await store.markFailed(id, errorMessage(err));
      throw err;
    }
    const { release, previous } = sup.status();
    // The new release serves: a deploy that did its work is not reported failed for the
    // housekeeping after it. The next deploy prunes again.
    const housekeeping = (what: string, err: unknown) =>
      report(this.reporter, {
        type: 'log',
        app: sup.app.name,
        source: 'store',
        line: `${what} failed (the deploy itself succeeded): ${errorMessage(err)}`,
      });
    // It serves now, whatever it did before: a later rollback to it needs no --force.
    if (inStore)
      await store
        .markServed(id)
        .catch((err: unknown) => housekeeping(`clearing ${id}'s failed mark`, err));
    try {
      return { ...result, pruned: await store.prune(release?.id, previous?.id) };
    } catch (err) {
      housekeeping('removing old releases', err);
      return { ...result, pruned: { removed: [], bytesFreed: 0 } };
    }
  }

  /** Reloads one app, or each in turn; one that fails (reported) keeps the rest from none. */
  async reload(app?: string): Promise<DeployResult[]> {
    const targets = app !== undefined ? [this.supervisor(app)] : [...this.apps.values()];
    const results: DeployResult[] = [];
    let firstError: unknown;
    for (const sup of targets) {
      try {
        results.push(await sup.reload());
      } catch (err) {
        firstError ??= err;
      }
    }
    if (firstError !== undefined) throw firstError as Error;
    return results;
  }

  /** Drains every app and closes the listeners. */
  async stop(): Promise<void> {
    await Promise.all([...this.apps.values()].map((s) => s.stop()));
  }

  /**
   * Replaces this agent by a new agent process (e.g. a newer baton) while the apps keep serving;
   * see successor.ts. If the successor fails, this agent carries on as before.
   */
  spawnSuccessor(argv: string[]): Promise<Successor> {
    return spawnSuccessor([...this.apps.values()], this.paths.agentLog, argv);
  }
}
