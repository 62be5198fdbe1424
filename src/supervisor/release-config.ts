import { readAppDeployConfig } from '../artifact/app-config.js';
import { BatonError } from '../errors.js';
import type { AppConfig } from '../protocol/app-schema.js';

/**
 * The app's config for one release: the agent's, overridden by the release's own `baton.yml`
 * (code as configuration). Read from the release directory every time a generation starts, so a
 * restarted agent runs a release exactly as it was deployed. Listeners are the agent's: a
 * release may name the ones it expects, and must not expect one the agent does not hold.
 */
export async function configForRelease(app: AppConfig, dir: string): Promise<AppConfig> {
  const own = await readAppDeployConfig(dir);
  if (!own) return app;
  for (const l of own.listeners ?? []) {
    if (!app.listeners.some((held) => held.name === l.name))
      throw new BatonError(
        'APP_CONFIG_INVALID',
        `${dir}/baton.yml expects a listener "${l.name}" that the agent's config for ${app.name} does not have; add it to the agent's config first`,
      );
  }
  return {
    ...app,
    ...(own.command && { command: own.command }),
    ...(own.readiness && { readiness: own.readiness }),
    ...(own.drain && { drain: own.drain }),
    ...(own.hooks && { hooks: own.hooks }),
    ...(own.env && { env: { ...app.env, ...own.env } }),
  };
}
