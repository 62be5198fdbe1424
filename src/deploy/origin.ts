import os from 'node:os';
import type { DeployOrigin } from '../protocol/channel.js';
import type { HostPlan } from './host-deploy.js';

/** Who deploys and from which run: GitHub's variables in Actions, user@machine elsewhere. */
export function originFromEnv(env: NodeJS.ProcessEnv): DeployOrigin {
  const actor = env.GITHUB_ACTOR || `${os.userInfo().username}@${os.hostname()}`;
  return {
    actor: actor.slice(0, 128),
    ...(env.GITHUB_REPOSITORY && { repository: env.GITHUB_REPOSITORY.slice(0, 256) }),
    ...(env.GITHUB_RUN_ID && { runId: env.GITHUB_RUN_ID.slice(0, 64) }),
    ...(env.GITHUB_RUN_ATTEMPT && { runAttempt: env.GITHUB_RUN_ATTEMPT.slice(0, 16) }),
    ...(env.GITHUB_WORKFLOW && { workflow: env.GITHUB_WORKFLOW.slice(0, 256) }),
    ...(env.GITHUB_SHA && { sha: env.GITHUB_SHA.slice(0, 64) }),
  };
}

/**
 * A deploy id unless one is given: the run id and attempt in Actions (a re-run of a job
 * re-attaches instead of deploying twice), a fresh one by hand.
 */
export function deployIdFor(
  given: string | undefined,
  /** What the id is for: a plan's kind, or `undo` (the way back after a failed fleet deploy). */
  kind: HostPlan['kind'] | 'undo',
  app: string,
  hostLabel: string,
  env: NodeJS.ProcessEnv,
): string {
  if (given !== undefined) return given;
  const host = hostLabel.replace(/[^A-Za-z0-9_.@-]/g, '_');
  const base = env.GITHUB_RUN_ID
    ? `gh-${env.GITHUB_RUN_ID}-${env.GITHUB_RUN_ATTEMPT ?? '1'}`
    : `${new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '')}-${Math.random().toString(36).slice(2, 8)}`;
  return `${base}-${kind}-${app}-${host}`.slice(0, 128);
}
