import { open } from 'node:fs/promises';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { BatonError, errorMessage, formatIssues } from '../errors.js';
import { AppSchema, refuseDuplicateNames } from '../protocol/app-schema.js';

/** The app's deploy config travels inside the artifact, at its root, under this name. */
export const APP_CONFIG_FILE = 'baton.yml';

/** A config file bigger than this is a mistake (or an attack), not a config. */
export const MAX_APP_CONFIG_BYTES = 1024 * 1024;

const app = AppSchema.shape;

/**
 * `baton.yml`: how the app wants to be run, versioned with its code. Every field is optional and
 * overrides the agent's config for the app; a field left out keeps the agent's value. The fields
 * are the agent's own (`AppSchema`) with their defaults removed, so an absent field stays absent
 * instead of resetting the agent's setting to a default.
 */
export const AppDeployConfigSchema = z
  .object({
    /** Program and arguments, run without a shell in the release directory. */
    command: app.command.optional(),
    /** How the agent knows a new generation is ready (`notify`, `http` or `delay`). */
    readiness: app.readiness.unwrap().optional(),
    /** Signal and deadline for stopping the old generation. */
    drain: app.drain.unwrap().optional(),
    /** Shell commands around starts and restarts (`start`, `stop`, `beforeRestart`, `afterRestart`). */
    hooks: app.hooks.unwrap().optional(),
    /** Extra environment for the app and its hooks. */
    env: app.env.unwrap().optional(),
    /** Sockets the app expects to inherit, by name. */
    listeners: app.listeners.optional(),
  })
  .strict()
  .superRefine((cfg, ctx) =>
    refuseDuplicateNames(cfg.listeners ?? [], 'listener', (i) => ['listeners', i, 'name'], ctx),
  );
export type AppDeployConfig = z.infer<typeof AppDeployConfigSchema>;

/**
 * Parses and validates the text of a `baton.yml`; `source` names it in errors. An empty file is
 * an empty config.
 */
export function parseAppDeployConfig(text: string, source: string): AppDeployConfig {
  if (Buffer.byteLength(text) > MAX_APP_CONFIG_BYTES)
    throw new BatonError(
      'APP_CONFIG_INVALID',
      `${source}: larger than ${MAX_APP_CONFIG_BYTES} bytes; keep the deploy config small`,
    );
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (err) {
    throw new BatonError('APP_CONFIG_INVALID', `${source}: not valid YAML: ${errorMessage(err)}`);
  }
  const parsed = AppDeployConfigSchema.safeParse(raw ?? {});
  if (!parsed.success)
    throw new BatonError('APP_CONFIG_INVALID', `${source}: ${formatIssues(parsed.error)}`);
  return parsed.data;
}

/**
 * Reads `<dir>/baton.yml` and validates it, so a bad config fails at pack time, before anything
 * is sent. Returns undefined when there is none: the agent's config then applies unchanged.
 */
export async function readAppDeployConfig(dir: string): Promise<AppDeployConfig | undefined> {
  const file = path.join(dir, APP_CONFIG_FILE);
  let text: string;
  try {
    const handle = await open(file, 'r');
    try {
      const { size } = await handle.stat();
      if (size > MAX_APP_CONFIG_BYTES)
        throw new BatonError(
          'APP_CONFIG_INVALID',
          `${file}: larger than ${MAX_APP_CONFIG_BYTES} bytes; keep the deploy config small`,
        );
      text = await handle.readFile('utf8');
    } finally {
      await handle.close();
    }
  } catch (err) {
    if (err instanceof BatonError) throw err;
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new BatonError('APP_CONFIG_INVALID', `${file}: cannot read: ${errorMessage(err)}`);
  }
  return parseAppDeployConfig(text, file);
}
