import { z } from 'zod';

/**
 * What the agent answers on its control socket and in the channel's replies: results of deploys
 * and rollbacks, its status, the releases it keeps. The agent builds these values; a client
 * parses them with these schemas before it reads a field.
 */

/** A release as the agent runs it: its id and the directory it was unpacked to. */
export const ReleaseSchema = z.object({ id: z.string(), dir: z.string() });
export type Release = z.infer<typeof ReleaseSchema>;

/** One handover, as the app's supervisor made it. */
export const DeployResultSchema = z.object({
  app: z.string(),
  releaseId: z.string(),
  generation: z.number(),
  previousReleaseId: z.string().optional(),
  /** How the old generation ended: it exited, was killed at the drain deadline, or there was none. */
  drained: z.enum(['exited', 'killed', 'none']),
  /** The old generation was stopped before the new one started (listeners not held). */
  cold: z.boolean(),
  durationMs: z.number(),
});
export type DeployResult = z.infer<typeof DeployResultSchema>;

/** A deploy or rollback of a stored release, with what the store pruned after it. */
export const StoreDeployResultSchema = DeployResultSchema.extend({
  pruned: z.object({ removed: z.array(z.string()), bytesFreed: z.number() }),
});
export type StoreDeployResult = z.infer<typeof StoreDeployResultSchema>;

/** One app as `baton agent status` shows it. */
export const AppStatusSchema = z.object({
  name: z.string(),
  state: z.enum(['running', 'starting', 'deploying', 'restarting', 'stopped', 'failed']),
  release: ReleaseSchema.optional(),
  previous: ReleaseSchema.optional(),
  generation: z
    .object({ number: z.number(), pid: z.number(), releaseId: z.string(), startedAt: z.string() })
    .optional(),
  listeners: z.array(
    z.object({
      name: z.string(),
      address: z.string(),
      fd: z.number().optional(),
      origin: z.string().optional(),
    }),
  ),
  /** Set when the agent does not hold the listeners (re-adopted after a crash without socket activation). */
  warning: z.string().optional(),
  /** The deploy (or start, or restart) under way. */
  deploy: z.string().optional(),
  restarts: z.number(),
  lastError: z.string().optional(),
  /** The last `STATUS=` the serving generation sent (systemd readiness). */
  notifyStatus: z.string().optional(),
  /** The user its generations run as, when not the agent's own. */
  user: z.string().optional(),
});
export type AppStatus = z.infer<typeof AppStatusSchema>;

/** The agent as `baton agent status` shows it. */
export const AgentStatusSchema = z.object({
  pid: z.number(),
  startedAt: z.string(),
  configFile: z.string(),
  /** The remote-deploy channel's TCP port, when the config has a channel with a `port`. */
  channelPort: z.number().optional(),
  /** The remote-deploy channel's unix socket, when the config has a channel. */
  channelSocket: z.string().optional(),
  apps: z.array(AppStatusSchema),
});
export type AgentStatus = z.infer<typeof AgentStatusSchema>;

/** A release the store keeps, as `baton releases` lists it. */
export const ReleaseInfoSchema = z.object({
  id: z.string(),
  digest: z.string(),
  createdAt: z.string(),
  gitSha: z.string().optional(),
  /**
   * `untrusted`: its signature no longer verifies with the agent's trusted keys (or it is
   * unsigned and unsigned artifacts are no longer allowed); it is not switched to again. Only
   * `current` goes before it: what runs is never stopped for that.
   */
  status: z.enum(['current', 'previous', 'untrusted', 'failed', 'kept']),
  failedReason: z.string().optional(),
  /** Why it is `untrusted` (also for the current release, which keeps that status). */
  untrustedReason: z.string().optional(),
});
export type ReleaseInfo = z.infer<typeof ReleaseInfoSchema>;

/** The answer to `upgrade`: the new agent's pid, once it is ready. */
export const UpgradeResultSchema = z.object({ pid: z.number() });
export type UpgradeResult = z.infer<typeof UpgradeResultSchema>;
