import { z } from 'zod';
import { BatonError, errorCode, errorMessage } from '../errors.js';
import {
  AgentStatusSchema,
  ReleaseInfoSchema,
  type AppStatus,
  type ReleaseInfo,
} from '../protocol/results.js';
import type { AgentLink } from './agent-link.js';

/** The protocol that has `stage` and `switch`: a fleet deploy needs it on every host. */
export const FLEET_PROTOCOL = 2;

/** What one host runs and holds, read before anything changes. */
export interface HostFacts {
  /** The agent, e.g. `baton 0.1.0`, and the protocol it chose. */
  agent: string;
  protocol: number;
  state: AppStatus['state'];
  current?: string;
  previous?: string;
  releases: ReleaseInfo[];
}

/** A failure that belongs to one step of one host. */
export interface HostFailure {
  step: 'preflight' | 'stage' | 'switch' | 'rollback';
  code: string;
  message: string;
  /** The last lines of the failing hook or generation, when the agent sent them. */
  lines: string[];
  /** The last phase the host reached before it failed (e.g. `generation-started`), when known. */
  phase?: string;
}

export function failure(step: HostFailure['step'], err: unknown, phase?: string): HostFailure {
  return {
    step,
    code: errorCode(err) ?? 'DEPLOY_FAILED',
    message: errorMessage(err),
    lines: err instanceof BatonError ? [...err.lines] : [],
    ...(phase !== undefined && { phase }),
  };
}

/**
 * Reaches one host (SSH, its host key, the agent's token both ways) and reads what it runs and
 * holds for `app`, leaving the connection open in `link` for the steps after. Changes nothing.
 * Throws with the reason when the host cannot take part.
 */
export async function preflightHost(
  link: AgentLink,
  app: string,
  needsProtocol: number,
): Promise<HostFacts> {
  const client = await link.get();
  try {
    if (client.protocol < needsProtocol)
      throw new BatonError(
        'PROTOCOL_MISMATCH',
        `the agent (${client.agentName || 'unknown version'}) speaks channel protocol ${client.protocol}; this deploy needs ${needsProtocol}: upgrade the agent on the host (baton agent upgrade)`,
      );
    const status = AgentStatusSchema.parse(await client.query({ type: 'status' }));
    const own = status.apps.find((a) => a.name === app);
    if (!own)
      throw new BatonError(
        'APP_UNKNOWN',
        `the agent has no app "${app}" (it runs ${status.apps.map((a) => a.name).join(', ') || 'none'}): check the app input, or add the app to the agent's config`,
      );
    const releases = z
      .array(ReleaseInfoSchema)
      .parse(await client.query({ type: 'releases', app }));
    return {
      agent: client.agentName,
      protocol: client.protocol,
      state: own.state,
      ...(own.release && { current: own.release.id }),
      ...(own.previous && { previous: own.previous.id }),
      releases,
    };
  } catch (err) {
    link.drop();
    throw err;
  }
}

/** Why a host cannot be switched to `release`, or undefined when it can. */
export function cannotSwitchTo(facts: HostFacts, release: string): string | undefined {
  const held = facts.releases.find((r) => r.id === release);
  if (!held)
    return `does not hold release ${release} (it holds ${facts.releases.map((r) => r.id).join(', ') || 'none'})`;
  if (held.status === 'failed')
    return `holds ${release} marked failed${held.failedReason ? ` (${held.failedReason})` : ''}: deploy a fixed release, or roll back with baton rollback --force on the host`;
  if (held.status === 'untrusted')
    return `no longer trusts ${release}${held.untrustedReason ? ` (${held.untrustedReason})` : ''}`;
  return undefined;
}

/**
 * The release a fleet rollback goes to: `named`, or the one previous release every host
 * shares. Throws, listing each host's current and previous release, when they disagree.
 */
export function rollbackTarget(
  facts: ReadonlyMap<string, HostFacts>,
  named: string | undefined,
): string {
  if (named !== undefined) return named;
  const previous = new Set([...facts.values()].map((f) => f.previous));
  const only = previous.size === 1 ? [...previous][0] : undefined;
  if (only !== undefined) return only;
  const lines = [...facts].map(
    ([host, f]) =>
      `  ${host}: runs ${f.current ?? 'nothing'}, ran ${f.previous ?? 'nothing'} before`,
  );
  throw new BatonError(
    'RELEASE_UNKNOWN',
    `the hosts do not share one previous release, so a rollback has no single target; name one with the release input:\n${lines.join('\n')}`,
  );
}
