import { getOctokit } from '@actions/github';
import { errorMessage } from '../errors.js';

/** What a GitHub Deployment records of one fleet deploy. */
export interface DeploymentRequest {
  environment: string;
  environmentUrl?: string;
  /** The commit the release was built from. */
  ref: string;
  release: string;
  kind: 'deploy' | 'redeploy' | 'rollback';
}

/** A recorded deployment that takes statuses; `finish` never throws. */
export interface DeploymentRecord {
  finish(ok: boolean, description: string): Promise<void>;
}

/**
 * Records a GitHub Deployment (in_progress now, success or failure at the end) through the
 * Deployments API at GITHUB_API_URL. No token, no permission, no API: `warn` hears why and
 * the deploy goes on without one (undefined).
 */
export async function startDeployment(
  token: string | undefined,
  req: DeploymentRequest,
  env: NodeJS.ProcessEnv,
  warn: (line: string) => void,
  /** Stops a call GitHub does not answer (cancellation, the step's timeout). */
  signal?: AbortSignal,
): Promise<DeploymentRecord | undefined> {
  const [owner, repo] = (env.GITHUB_REPOSITORY ?? '').split('/');
  const skip = (why: string) => {
    warn(`no GitHub Deployment recorded: ${why}; the deploy goes on`);
    return undefined;
  };
  if (!token) return skip('no github-token');
  if (!owner || !repo) return skip('GITHUB_REPOSITORY is not set');
  const octokit = getOctokit(token);
  const logUrl =
    env.GITHUB_SERVER_URL && env.GITHUB_RUN_ID
      ? `${env.GITHUB_SERVER_URL}/${owner}/${repo}/actions/runs/${env.GITHUB_RUN_ID}${env.GITHUB_RUN_ATTEMPT ? `/attempts/${env.GITHUB_RUN_ATTEMPT}` : ''}`
      : undefined;
  let id: number;
  try {
    const created = await octokit.rest.repos.createDeployment({
      owner,
      repo,
      ref: req.ref,
      environment: req.environment,
      description: `baton ${req.kind}: ${req.release}`.slice(0, 140),
      payload: { release: req.release, kind: req.kind },
      auto_merge: false,
      // The workflow already decided to deploy: GitHub's commit checks are not asked again.
      required_contexts: [],
      request: {
        signal: signal
          ? AbortSignal.any([signal, AbortSignal.timeout(30_000)])
          : AbortSignal.timeout(30_000),
      },
    });
    if (!('id' in created.data)) return skip(`GitHub answered: ${created.data.message ?? 'no id'}`);
    id = created.data.id;
  } catch (err) {
    return skip(
      `${errorMessage(err)} (the job needs permissions: deployments: write, contents: read)`,
    );
  }
  const status = async (state: 'in_progress' | 'success' | 'failure', description: string) => {
    try {
      await octokit.rest.repos.createDeploymentStatus({
        owner,
        repo,
        deployment_id: id,
        state,
        description: description.slice(0, 140),
        ...(logUrl && { log_url: logUrl }),
        ...(req.environmentUrl && { environment_url: req.environmentUrl }),
        auto_inactive: true,
        // The final status is sent even after a cancellation: bounded by its own clock.
        request: { signal: AbortSignal.timeout(30_000) },
      });
    } catch (err) {
      warn(`GitHub Deployment ${id}: status ${state} not recorded: ${errorMessage(err)}`);
    }
  };
  await status('in_progress', `deploying ${req.release}`);
  return { finish: (ok, description) => status(ok ? 'success' : 'failure', description) };
}
