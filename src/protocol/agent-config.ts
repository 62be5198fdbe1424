import { z } from 'zod';
import { AppSchema, refuseDuplicateNames } from './app-schema.js';
import { ChannelConfigSchema } from './channel-config.js';

/** The agent's config file (`/etc/baton/agent.yml`): its state dir, trusted keys, apps, channel. */
export const AgentConfigSchema = z
  .object({
    /** Where the agent keeps its PID file, state, control socket and logs. */
    stateDir: z.string().min(1),
    /** Public keys (`ed25519:<base64>`, from `baton keygen`) whose signed artifacts are accepted. */
    trustedKeys: z
      .array(
        z
          .string()
          .regex(
            /^ed25519:[A-Za-z0-9+/]{43}=$/,
            'expected ed25519:<base64 of 32 bytes>, as baton keygen writes it',
          ),
      )
      .default([]),
    /** Accept artifacts that carry no signature. Off unless said in as many words. */
    allowUnsigned: z.boolean().default(false),
    apps: z.array(AppSchema).min(1),
    /** Remote deploys over a WebSocket (through SSH, or wss://). No channel when left out. */
    channel: ChannelConfigSchema.optional(),
  })
  .strict()
  .superRefine((cfg, ctx) => {
    refuseDuplicateNames(cfg.apps, 'app', (i) => ['apps', i, 'name'], ctx);
    for (const [i, app] of cfg.apps.entries()) {
      const shared = new Set<string>();
      for (const [kind, list] of [
        ['dirs', app.shared.dirs],
        ['files', app.shared.files],
      ] as const) {
        for (const [j, p] of list.entries()) {
          const clash = [...shared].find(
            (q) => q === p || q.startsWith(`${p}/`) || p.startsWith(`${q}/`),
          );
          if (clash !== undefined)
            ctx.addIssue({
              code: 'custom',
              path: ['apps', i, 'shared', kind, j],
              message: `shared path "${p}" overlaps "${clash}": list each place once`,
            });
          shared.add(p);
        }
      }
      refuseDuplicateNames(
        app.listeners,
        'listener',
        (j) => ['apps', i, 'listeners', j, 'name'],
        ctx,
      );
    }
  });
export type AgentConfig = z.infer<typeof AgentConfigSchema>;
