import type { Reporter } from '../protocol/events.js';
import type { AppSecrets } from './app-secrets.js';
import type { AppConfig } from '../protocol/app-schema.js';
import { readEnvFile, secretValues } from './env-file.js';
import type { Launch } from './generation-launch.js';
import { runHook, type HookName } from './hooks.js';
import { accountEnv, launchShell, type RunAs } from './privilege.js';
import { configForRelease } from './release-config.js';
import { linkShared, prepareShared } from './shared-paths.js';

/** Where an app runs, worked out once when the agent starts (see preflight.ts). */
export interface AppRuntime {
  /** Who its generations and hooks run as; undefined: the agent's own user. */
  runAs: RunAs | undefined;
  /** Directory of per-generation notify sockets. */
  runDir: string;
  /** The app's shared area, linked into every release. */
  sharedRoot: string;
}

/**
 * What every start of an app's code goes through, a generation's or a hook's: its user, umask
 * and limits, its env file read again (and its secrets learnt), its shared paths linked in.
 */
export class AppLauncher {
  constructor(
    private readonly app: AppConfig,
    private readonly runtime: AppRuntime,
    private readonly secrets: AppSecrets,
    private readonly reporter: Reporter,
  ) {}

  /**
   * What a start of `app` (a generation or a hook) runs with: the env file read again now, the
   * app's user, umask and limits. A bad env file fails the start, with nothing stopped.
   */
  async launchFor(app: AppConfig): Promise<Launch> {
    const fileEnv = app.envFile ? await readEnvFile(app.envFile) : {};
    this.secrets.remember(secretValues(app.secretEnv, app.env, fileEnv));
    const { runAs, runDir } = this.runtime;
    return {
      ...launchShell(runAs, app),
      env: { ...fileEnv, ...accountEnv(runAs) },
      owner: runAs && { uid: runAs.uid, gid: runAs.gid },
      runDir,
      masker: () => this.secrets.masker,
    };
  }

  /** Creates what is missing of the shared area and links it into the release, before its hooks. */
  async linkShared(dir: string): Promise<void> {
    const { shared } = this.app;
    if (shared.dirs.length === 0 && shared.files.length === 0) return;
    const { runAs, sharedRoot } = this.runtime;
    await prepareShared(sharedRoot, shared, runAs && { uid: runAs.uid, gid: runAs.gid });
    await linkShared(dir, sharedRoot, shared);
  }

  /**
   * Runs hook `name` of the release in `cwd` (its baton.yml may bring its own hooks), as the app.
   * `previousReleaseId` is the release a deploy moves away from (for beforeRestart and
   * afterRestart alike).
   */
  async hook(
    name: HookName,
    cwd: string,
    releaseId: string | undefined,
    previousReleaseId: string | undefined,
  ): Promise<void> {
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
}
