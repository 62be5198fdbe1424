import { BatonError } from '../errors.js';
import type { DeployEvent, DeployOrigin, DeployOutcome } from '../protocol/channel.js';
import { deployToHost, type HostPlan, type HostReporter } from '../deploy/host-deploy.js';
import { AgentClient } from '../transport/client.js';
import { formatEvent } from '../protocol/events.js';
import type { Output } from './agent-commands.js';
import { printPacked } from './artifact-commands.js';
import { prepareArtifact } from '../deploy/prepare-artifact.js';
import { Progress } from './progress.js';
import { deployIdFor, originFromEnv } from '../deploy/origin.js';
import { remoteTarget, type RemoteValues } from './remote-options.js';

export interface RemoteFlags {
  json: boolean;
  quiet: boolean;
}

/** Prints a host's progress: phase lines, an upload bar, or JSON lines. */
function reporterFor(flags: RemoteFlags, out: Output, host: string): HostReporter {
  const progress = new Progress(process.stderr);
  return {
    event(event: DeployEvent) {
      if (flags.json) return out.line(JSON.stringify({ type: 'event', host, event }));
      if (event.type === 'progress')
        return flags.quiet ? undefined : progress.update(event.bytes, event.total);
      progress.done();
      if (!flags.quiet) out.line(`[${host}] ${formatEvent(event)}`);
    },
    note(line) {
      progress.reset();
      if (flags.json) out.line(JSON.stringify({ type: 'note', host, line }));
      else process.stderr.write(`[${host}] ${line}\n`);
    },
  };
}

function finish(outcome: DeployOutcome, host: string, flags: RemoteFlags, out: Output): void {
  if (flags.json) out.line(JSON.stringify({ type: 'result', host, outcome }));
  else if (outcome.ok) {
    const phases = Object.entries(outcome.phases)
      .map(([k, ms]) => `${k} ${ms} ms`)
      .join(', ');
    out.line(
      `[${host}] ${outcome.kind} ${outcome.deployId}: ${outcome.app} now runs ${outcome.releaseId} (generation ${outcome.generation}${outcome.cold ? ', cold switch' : ''}); ${outcome.uploadedBytes} bytes sent, ${outcome.totalMs} ms`,
    );
    if (!flags.quiet) out.line(`[${host}]   ${phases}`);
  }
  if (!outcome.ok) {
    const err = outcome.error!;
    throw new BatonError(
      err.code as never,
      `${outcome.kind} ${outcome.deployId} on ${host} failed${'switched' in outcome.phases ? ' after the switch' : `; ${outcome.app} keeps the release it had`}. ${err.message}`,
      err.lines,
    );
  }
}

const toStderr = (line: string) => void process.stderr.write(`${line}\n`);

/**
 * Reaches the agent the options name (checked before `plan` runs, so a wrong option packs
 * nothing), runs one deploy or rollback there to its outcome, prints it, and lets go.
 */
async function runOnHost(
  kind: HostPlan['kind'],
  opts: { app: string; remote: RemoteValues } & RemoteFlags,
  out: Output,
  env: NodeJS.ProcessEnv,
  plan: (base: { deployId: string; app: string; origin: DeployOrigin }) => Promise<HostPlan>,
): Promise<void> {
  const { dialer, token, hostLabel } = await remoteTarget(opts.remote, env, toStderr);
  try {
    const base = {
      deployId: deployIdFor(opts.remote['deploy-id'], kind, opts.app, hostLabel, env),
      app: opts.app,
      origin: originFromEnv(env),
    };
    const outcome = await deployToHost(
      dialer,
      token,
      await plan(base),
      reporterFor(opts, out, hostLabel),
    );
    finish(outcome, hostLabel, opts, out);
  } finally {
    await dialer.close();
  }
}

/** `baton deploy <dir|archive> --app NAME (--host … | --agent …)`. */
export async function remoteDeploy(
  input: string,
  opts: {
    app: string;
    key?: string;
    manifest?: string;
    releaseId?: string;
    gitSha?: string;
    remote: RemoteValues;
  } & RemoteFlags,
  out: Output,
  env: NodeJS.ProcessEnv = process.env,
): Promise<void> {
  const quietOut: Output = opts.json || opts.quiet ? { line: () => {}, json: () => {} } : out;
  let cleanup = async () => {};
  try {
    await runOnHost('deploy', opts, out, env, async (base) => {
      const artifact = await prepareArtifact(input, opts, env, (packed) =>
        printPacked(packed, opts.app, quietOut),
      );
      cleanup = artifact.cleanup;
      return { kind: 'deploy', ...base, manifest: artifact.signed, archive: artifact.archive };
    });
  } finally {
    await cleanup();
  }
}

/** `baton rollback --app NAME [--to RELEASE] [--force] (--host … | --agent …)`. */
export function remoteRollback(
  opts: { app: string; to?: string; force?: boolean; remote: RemoteValues } & RemoteFlags,
  out: Output,
  env: NodeJS.ProcessEnv = process.env,
): Promise<void> {
  return runOnHost('rollback', opts, out, env, (base) =>
    Promise.resolve({
      kind: 'rollback',
      ...base,
      ...(opts.to !== undefined && { to: opts.to }),
      ...(opts.force === true && { force: true }),
    }),
  );
}

/** `baton releases` and `baton status` against a remote agent: one query, printed. */
export async function remoteQuery(
  req: { type: 'status' } | { type: 'releases'; app: string },
  remote: RemoteValues,
  env: NodeJS.ProcessEnv = process.env,
): Promise<unknown> {
  const { dialer, token } = await remoteTarget(remote, env, toStderr);
  let client: AgentClient | undefined;
  try {
    client = await AgentClient.connect(dialer, token);
    return await client.query(req);
  } finally {
    client?.close();
    await dialer.close();
  }
}
