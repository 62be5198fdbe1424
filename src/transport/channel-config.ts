import { z } from 'zod';
import { DEFAULT_MAX_PAYLOAD } from '../protocol/channel.js';

/** The port the agent's channel listens on unless configured: reached through SSH, on loopback. */
export const DEFAULT_CHANNEL_PORT = 7701;

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

/** The agent's WebSocket channel for remote deploys (the `channel:` section of its config). */
export const ChannelConfigSchema = z
  .object({
    /**
     * Address to listen on. Loopback by default: clients come through SSH. Any other address
     * needs `tls`, so a token exchange and an artifact never cross a network in clear.
     */
    host: z.string().min(1).default('127.0.0.1'),
    /** TCP port; 0 picks a free one (tests), shown by `baton agent status`. */
    port: z.number().int().min(0).max(65535).default(DEFAULT_CHANNEL_PORT),
    /** File holding the agent's secret token (`baton agent token` makes one); mode 0600. */
    tokenFile: z.string().min(1),
    /** Certificate and key (PEM files) for `wss://`: direct connections without SSH. */
    tls: z
      .object({ cert: z.string().min(1), key: z.string().min(1) })
      .strict()
      .optional(),
    /** Largest WebSocket frame accepted, in bytes. */
    maxPayload: z
      .number()
      .int()
      .min(64 * 1024)
      .max(64 * 1024 * 1024)
      .default(DEFAULT_MAX_PAYLOAD),
    /** A peer that answers no ping within this long is dropped. */
    heartbeatMs: z.number().int().min(200).max(300_000).default(15_000),
    /** A connection must complete hello and auth within this long. */
    authTimeoutMs: z.number().int().min(100).max(120_000).default(10_000),
    /** Failed logins allowed per peer per `authWindowMs` before it is refused outright. */
    authFailures: z.number().int().min(1).max(1000).default(5),
    authWindowMs: z.number().int().min(1000).max(3_600_000).default(60_000),
    /** Connections that have not authenticated yet, at most, at a time. */
    maxPendingConnections: z.number().int().min(1).max(10_000).default(32),
    /** An upload that brings no byte for this long ends (UPLOAD_INCOMPLETE), freeing the app. */
    uploadIdleMs: z.number().int().min(100).max(600_000).default(60_000),
    /** Finished deploys remembered for clients that re-attach. */
    keepResults: z.number().int().min(1).max(10_000).default(200),
    /** The audit log (JSON lines); default `<stateDir>/audit.log`. */
    auditLog: z.string().min(1).optional(),
  })
  .strict()
  .superRefine((cfg, ctx) => {
    if (!isLoopback(cfg.host) && !cfg.tls)
      ctx.addIssue({
        code: 'custom',
        path: ['tls'],
        message: `listening on ${cfg.host} (beyond loopback) needs tls: { cert, key }; or keep host 127.0.0.1 and deploy through SSH`,
      });
  });
export type ChannelConfig = z.infer<typeof ChannelConfigSchema>;
