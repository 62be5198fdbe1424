import type { Readable } from 'node:stream';
import type { DeployOutcome, SessionRequest } from '../protocol/channel.js';
import type { DeploySession } from './deploy-session.js';

/**
 * What the channel needs from the agent: run a deploy, rollback, stage or switch to its end
 * (`upload` asks the client for the artifact: deploy and stage only), answer queries.
 */
export interface ChannelAgent {
  run(
    session: DeploySession,
    req: SessionRequest,
    upload: (bytes: number) => Readable,
  ): Promise<DeployOutcome>;
  query(req: { type: 'status' } | { type: 'releases'; app: string }): Promise<unknown>;
}
