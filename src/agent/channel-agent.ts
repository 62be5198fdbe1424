import type { ChannelAgent } from '../transport/channel-agent.js';
import type { Agent } from '../supervisor/agent.js';

/** Adapts the agent: a session hears every event of its app while it runs. */
export function channelAgent(agent: Agent): ChannelAgent {
  return {
    async run(session, req, upload) {
      const app = req.app;
      // Bytes count as uploaded once the store has them whole: a cut upload sent none that stay.
      let asked = 0;
      let uploadedBytes = 0;
      const unsubscribe = agent.subscribe((event) => {
        if (event.app !== app) return;
        if (event.type === 'phase' && event.phase === 'received') uploadedBytes = asked;
        session.emit(event);
      });
      const source = (bytes: number) => {
        asked = bytes;
        return upload(bytes);
      };
      try {
        if (req.type === 'stage') {
          const staged = await agent.stageReceived(app, req.manifest, source);
          return session.finish(staged);
        }
        const result =
          req.type === 'deploy'
            ? await agent.deployReceived(app, req.manifest, source)
            : {
                ...(req.type === 'switch'
                  ? await agent.switchTo(app, req.to)
                  : await agent.rollback(app, req.to, { force: req.force === true })),
                uploadedBytes: 0,
              };
        return session.finish({
          releaseId: result.releaseId,
          previousReleaseId: result.previousReleaseId,
          generation: result.generation,
          cold: result.cold,
          uploadedBytes: result.uploadedBytes,
        });
      } catch (err) {
        return session.finish({ error: err, uploadedBytes });
      } finally {
        unsubscribe();
      }
    },
    query(req) {
      return req.type === 'status' ? Promise.resolve(agent.status()) : agent.releases(req.app);
    },
  };
}
