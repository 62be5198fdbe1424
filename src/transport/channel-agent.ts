import type { Readable } from 'node:stream';
import type { DeployOutcome, DeployRequest, RollbackRequest } from '../protocol/channel.js';
import type { DeploySession } from './deploy-session.js';

/** What the channel needs from the agent: run a deploy or rollback to its end, answer queries. */
export interface ChannelAgent {
  run(
    session: DeploySession,
    req: DeployRequest | RollbackRequest,
    upload: (bytes: number) => Readable,
  ): Promise<DeployOutcome>;
  query(req: { type: 'status' } | { type: 'releases'; app: string }): Promise<unknown>;
}
