import { BatonError, errorMessage } from '../errors.js';
import { runFleet } from '../deploy/fleet.js';
import type { FleetHost, FleetReport, FleetTask } from '../deploy/fleet-types.js';
import { deployIdFor, originFromEnv } from '../deploy/origin.js';
import { prepareArtifact, type PreparedArtifact } from '../deploy/prepare-artifact.js';
import { sshDialer } from '../transport/dialer.js';
import type { ActionIO } from './action-io.js';
import { startDeployment, type DeploymentRecord } from './deployments.js';
import { readInputs, type ActionInputs } from './inputs.js';
import { bytesText, jobLog } from './job-log.js';
import { renderSummary } from './summary.js';

/** One dialer per host: SSH with the inputs' key and host-key checks, to that host's agent. */
function fleetHosts(inputs: ActionInputs, io: ActionIO): FleetHost[] {
  return inputs.hosts.map((h) => {
    const fingerprint = h.fingerprint ?? inputs.ssh.fingerprint;
    const agent =
      h.agentPort ??
      h.agentSocket ??
      ('port' in inputs.agent ? inputs.agent.port : inputs.agent.socket);
    return {
      label: h.label,
      dialer: sshDialer(
        {
          target: h.target,
          privateKey: inputs.ssh.key,
          ...(inputs.ssh.knownHosts !== undefined && { knownHosts: inputs.ssh.knownHosts }),
          ...(fingerprint !== undefined && { fingerprint }),
          ...(inputs.ssh.jump.length > 0 && { jump: inputs.ssh.jump }),
          connectTimeoutMs: inputs.ssh.connectTimeoutMs,
          acceptUnknownHostKey: false,
          log: (line) => io.info(`[${h.label}] ${line}`),
        },
        agent,
      ),
    };
  });
}

function outputs(io: ActionIO, report: FleetReport): void {
  const hosts = (...results: string[]) =>
    report.hosts
      .filter((r) => results.includes(r.result))
      .map((r) => r.host)
      .join(',');
  io.setOutput('release', report.now ?? '');
  io.setOutput('previous-release', report.previous ?? '');
  // The hosts that run the target now: switched by this run, or on it already.
  io.setOutput('hosts-succeeded', report.dryRun ? '' : hosts('switched', 'unchanged'));
  io.setOutput('hosts-failed', hosts('failed'));
  io.setOutput('duration', (report.durationMs / 1000).toFixed(1));
  io.setOutput(
    'report',
    JSON.stringify({
      ok: report.ok,
      kind: report.kind,
      target: report.target ?? null,
      reason: report.reason ?? null,
      cancelled: report.cancelled,
      dryRun: report.dryRun,
      hosts: report.hosts.map((r) => ({
        host: r.host,
        before: r.before ?? null,
        after: r.after ?? null,
        result: r.result,
        bytesSent: r.bytesSent,
        phases: r.phases,
        ...(r.failure && { error: r.failure }),
        ...(r.rolledBack && { rolledBack: r.rolledBack }),
      })),
    }),
  );
}

/**
 * The action: read the inputs, pack the artifact when there is one, deploy to the fleet, then
 * write the outputs, the summary and the deployment's status. `signal` aborts on cancellation;
 * the step's own timeout aborts the same way. Fails the step (never throws) on any failure.
 */
export async function run(
  io: ActionIO,
  env: NodeJS.ProcessEnv,
  signal: AbortSignal,
): Promise<void> {
  let inputs: ActionInputs;
  try {
    inputs = readInputs(io.inputs);
  } catch (err) {
    io.setFailed(errorMessage(err));
    return;
  }
  const timeout = AbortSignal.timeout(inputs.timeoutMs);
  const aborted = AbortSignal.any([signal, timeout]);
  const onAbort = () =>
    io.warning(
      timeout.aborted
        ? `the step's timeout (${inputs.timeoutMs / 1000} s) is up: no further host is switched; a switch under way finishes`
        : 'cancelled: no further host is switched; a switch under way finishes',
    );
  aborted.addEventListener('abort', onAbort, { once: true });

  const hosts = fleetHosts(inputs, io);
  let artifact: PreparedArtifact | undefined;
  let deployment: DeploymentRecord | undefined;
  try {
    let task: FleetTask;
    if (inputs.task.kind === 'deploy') {
      artifact = await prepareArtifact(
        inputs.task.artifact,
        {
          app: inputs.app,
          ...(inputs.task.releaseId !== undefined && { releaseId: inputs.task.releaseId }),
        },
        // The signing key comes from the input, never from a file on the runner.
        { ...env, BATON_SIGNING_KEY: inputs.signingKey ?? '' },
        (packed) =>
          io.info(
            `packed ${inputs.task.kind === 'deploy' ? inputs.task.artifact : ''} as ${packed.manifest.releaseId}: ${packed.entries} entries, ${bytesText(packed.size)}, ${packed.signed ? 'signed' : 'UNSIGNED (no signing-key)'}`,
          ),
      );
      const packedFor = artifact.signed.manifest.app;
      if (packedFor !== inputs.app)
        throw new BatonError(
          'USAGE',
          `input artifact: ${inputs.task.artifact} was packed for app ${packedFor}, not ${inputs.app}: pack it with --app ${inputs.app}, or set app`,
        );
      const named = inputs.task.releaseId;
      if (named !== undefined && named !== artifact.signed.manifest.releaseId)
        throw new BatonError(
          'USAGE',
          `input release-id: ${inputs.task.artifact} is release ${artifact.signed.manifest.releaseId} (its signed manifest says so); leave release-id empty for a packed archive`,
        );
      task = { kind: 'deploy', archive: artifact.archive, signed: artifact.signed };
    } else {
      task = inputs.task;
    }
    const report = await runFleet(
      hosts,
      {
        app: inputs.app,
        token: inputs.agentToken,
        task,
        strategy: inputs.strategy,
        batchSize: inputs.batchSize,
        maxParallel: inputs.maxParallel,
        onFailure: inputs.onFailure,
        busyTimeoutMs: inputs.busyTimeoutMs,
        dryRun: inputs.dryRun,
        origin: originFromEnv(env),
        deployId: (kind, host) => deployIdFor(undefined, kind, inputs.app, host, env),
        signal: aborted,
        beforeChange: async (target, gitSha) => {
          if (!inputs.github.deployment || inputs.github.environment === undefined) return;
          deployment = await startDeployment(
            inputs.github.token,
            {
              environment: inputs.github.environment,
              ...(inputs.github.environmentUrl !== undefined && {
                environmentUrl: inputs.github.environmentUrl,
              }),
              ref: gitSha ?? env.GITHUB_SHA ?? 'HEAD',
              release: target,
              kind: inputs.task.kind,
            },
            env,
            (line) => io.warning(line),
            aborted,
          );
        },
      },
      jobLog(io),
    );
    outputs(io, report);
    await io.summary(renderSummary(inputs.app, report));
    await deployment?.finish(
      report.ok,
      report.ok ? `${report.target} serves` : (report.reason ?? 'failed'),
    );
    const where = report.hosts
      .map(
        (r) =>
          `${r.host}: ${r.after ?? (r.failure && r.failure.step !== 'stage' ? 'unknown' : 'no release')}`,
      )
      .join(', ');
    if (report.ok)
      io.info(
        report.dryRun
          ? `dry run done: nothing changed (${where})`
          : `done: ${report.now ? `every host runs ${report.now}` : where}`,
      );
    else io.setFailed(`${report.reason ?? 'the deploy failed'}. Each host runs: ${where}`);
  } catch (err) {
    await deployment?.finish(false, errorMessage(err));
    io.setFailed(errorMessage(err));
  } finally {
    aborted.removeEventListener('abort', onAbort);
    await Promise.all(hosts.map((h) => h.dialer.close().catch(() => undefined)));
    await artifact?.cleanup();
  }
}
