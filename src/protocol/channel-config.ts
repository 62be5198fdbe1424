import { z } from 'zod';
import { DEFAULT_MAX_PAYLOAD } from './channel.js';

/**
 * The unix socket the agent's channel listens on unless configured: clients reach it through
 * SSH (`direct-streamlocal`), and only root (or `socketGroup`) may open it on the host.
 */
export const DEFAULT_CHANNEL_SOCKET = '/run/baton/channel.sock';

/** The TCP port clients name by habit (`--agent-port`); the agent opens TCP only when `port` is set. */
export const DEFAULT_CHANNEL_PORT = 7701;

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

/** The agent's WebSocket channel for remote deploys (the `channel:` section of its config). */
export const ChannelConfigSchema = z
  .object({
    /**
     * Unix socket the channel always listens on; clients reach it through SSH. Only root may
     * open it (mode 0600), or root and `socketGroup` (0660). Its directory is made (0755) if
     * missing and must not be writable by others.
     */
    socket: z.string().min(1).default(DEFAULT_CHANNEL_SOCKET),
    /**
     * Group that may open the socket (mode 0660 root:group): the group of the SSH user that
     * deploys, when that is not root. Unset: root only (0600).
     */
    socketGroup: z.string().min(1).optional(),
    /**
     * TCP port to listen on as well; unset (the default): no TCP at all. Every local user can
     * connect to a TCP port, loopback or not, so prefer the socket; use TCP for `wss://` with
     * `tls` from outside. 0 picks a free port (tests).
     */
    port: z.number().int().min(0).max(65535).optional(),
    /**
     * Address for `port`. Any address beyond loopback needs `tls`, so a token exchange and an
     * artifact never cross a network in clear.
     */
    host: z.string().min(1).default('127.0.0.1'),
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
    /**
     * Failed logins allowed per peer per `authWindowMs`; past it a wrong login is refused with
     * AUTH_RATE_LIMITED (a right one never is). Refusals reach the audit log a few per peer per
     * window, then as one `refusals-summary` line with the count.
     */
    authFailures: z.number().int().min(1).max(1000).default(5),
    authWindowMs: z.number().int().min(1000).max(3_600_000).default(60_000),
    /**
     * Connections that have not authenticated yet, at most, at a time. A newcomer past it
     * closes the oldest of them (1013), never itself: a real client authenticates within a
     * round trip, an idle holder does not.
     */
    maxPendingConnections: z.number().int().min(1).max(10_000).default(32),
    /**
     * Open connections of every kind (socket and TCP, before and after the WebSocket upgrade),
     * at most. It is lowered further to keep a quarter of the agent's file limit (at least 256
     * descriptors) for apps, logs and state. Past it, the oldest connection not yet upgraded is
     * closed; with none, the newcomer is.
     */
    maxConnections: z.number().int().min(1).max(100_000).default(256),
    /** A connection must have sent its WebSocket upgrade (and TLS handshake) within this long. */
    upgradeTimeoutMs: z.number().int().min(100).max(60_000).default(5_000),
    /** An upload that brings no byte for this long ends (UPLOAD_INCOMPLETE), freeing the app. */
    uploadIdleMs: z.number().int().min(100).max(600_000).default(60_000),
    /** Finished deploys remembered for clients that re-attach. */
    keepResults: z.number().int().min(1).max(10_000).default(200),
    /** The audit log (JSON lines); default `<stateDir>/audit.log`. */
    auditLog: z.string().min(1).optional(),
    /**
     * Past this size the audit log is renamed `<auditLog>.1` (replacing the one before) and a
     * new one begun: at most twice this on disk.
     */
    auditMaxBytes: z
      .number()
      .int()
      .min(4096)
      .max(1024 * 1024 * 1024)
      .default(10 * 1024 * 1024),
  })
  .strict()
  .superRefine((cfg, ctx) => {
    if (cfg.port !== undefined && !isLoopback(cfg.host) && !cfg.tls)
      ctx.addIssue({
        code: 'custom',
        path: ['tls'],
        message: `listening on ${cfg.host} (beyond loopback) needs tls: { cert, key }; or drop port and deploy through SSH to channel.socket`,
      });
  });
export type ChannelConfig = z.infer<typeof ChannelConfigSchema>;
