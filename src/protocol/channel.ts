import { z } from 'zod';
import { ReleaseIdSchema, SignedManifestSchema } from './manifest.js';
import { PhaseEventSchema, LogEventSchema } from './events.js';

/**
 * The channel between a deploying client (the action, the CLI) and an agent: a WebSocket,
 * reached through an SSH tunnel or directly. Text frames carry one JSON message each, every one
 * a schema below; binary frames carry artifact bytes, only while the agent has asked for them.
 *
 * 1. client `hello` (the protocol versions it speaks) → agent `challenge` (the version chosen
 *    and a fresh nonce), or an error naming both sides' versions.
 * 2. client `auth` (HMAC of both nonces under the agent's token, and its own nonce) → agent
 *    `welcome` (its own HMAC over them: the agent proves it holds the token too).
 * 3. Requests. A deploy, rollback, stage or switch carries a deploy id chosen by the client;
 *    sending one again re-attaches to it. The agent streams numbered `event`s and one `result`
 *    per deploy.
 *
 * Versions: the agent chooses the highest version both sides list in hello. Protocol 2 adds
 * `stage` (upload, verify, unpack: no handover) and `switch` (hand over to a staged release),
 * the two passes of a fleet deploy; everything else is as in 1. On a connection that chose 1 the
 * agent refuses them (PROTOCOL_MISMATCH) and the client does not send them.
 */
export const PROTOCOL_VERSION = 2;
export const SUPPORTED_PROTOCOLS: readonly number[] = [1, PROTOCOL_VERSION];

/**
 * Requests that are not in every supported version, with the version that brought them: a
 * connection that chose an older one is refused them.
 */
export const PROTOCOL_SINCE = { stage: 2, switch: 2 } as const;

/** Largest frame the agent accepts; artifact bytes come in chunks well below it. */
export const DEFAULT_MAX_PAYLOAD = 1024 * 1024;
/** Size of the binary frames a client sends. */
export const UPLOAD_CHUNK_BYTES = 256 * 1024;

const Nonce = z.string().regex(/^[A-Za-z0-9+/]{43}=$/, 'base64 of 32 bytes');
const Mac = z.string().regex(/^[0-9a-f]{64}$/, 'hex of an HMAC-SHA256');
const AppName = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/, 'an app name');
const RequestId = z.string().min(1).max(64);

/** Chosen by the client, e.g. `<run id>-<attempt>-<host>`: the same id again re-attaches. */
export const DeployIdSchema = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$/, 'letters, digits, _ . : @ - (at most 128)');

/** Who deploys, from where: kept in the agent's audit log. Claimed by the client, after auth. */
export const DeployOriginSchema = z
  .object({
    /** A person or bot, e.g. the GitHub actor or `user@laptop`. */
    actor: z.string().min(1).max(128),
    repository: z.string().max(256).optional(),
    runId: z.string().max(64).optional(),
    runAttempt: z.string().max(16).optional(),
    workflow: z.string().max(256).optional(),
    sha: z.string().max(64).optional(),
  })
  .strict();
export type DeployOrigin = z.infer<typeof DeployOriginSchema>;

// client → agent

export const HelloSchema = z
  .object({
    type: z.literal('hello'),
    protocols: z.array(z.number().int().positive()).min(1).max(16),
    client: z.string().max(100),
  })
  .strict();

export const AuthSchema = z
  .object({ type: z.literal('auth'), clientNonce: Nonce, mac: Mac })
  .strict();

/** What a request that brings an artifact carries: `deploy` and `stage` alike. */
const ArtifactRequestFields = {
  deployId: DeployIdSchema,
  app: AppName,
  manifest: SignedManifestSchema,
  origin: DeployOriginSchema,
};

export const DeployRequestSchema = z
  .object({ type: z.literal('deploy'), ...ArtifactRequestFields })
  .strict();
export type DeployRequest = z.infer<typeof DeployRequestSchema>;

export const RollbackRequestSchema = z
  .object({
    type: z.literal('rollback'),
    deployId: DeployIdSchema,
    app: AppName,
    /** A release the host keeps; the previous release when left out. */
    to: ReleaseIdSchema.optional(),
    /**
     * Roll back to a release marked failed all the same. Never skips the check of its stored
     * signature against the keys the agent trusts now. Sent only when true, so that agents
     * from before it still take every other rollback.
     */
    force: z.boolean().optional(),
    origin: DeployOriginSchema,
  })
  .strict();
export type RollbackRequest = z.infer<typeof RollbackRequestSchema>;

/**
 * Protocol 2. The first pass of a fleet deploy: the artifact into the host's release store
 * (uploaded only when the store lacks its digest, verified, unpacked) and nothing more. What
 * runs is not touched, no release is marked failed, nothing is pruned.
 */
export const StageRequestSchema = z
  .object({ type: z.literal('stage'), ...ArtifactRequestFields })
  .strict();
export type StageRequest = z.infer<typeof StageRequestSchema>;

/**
 * Protocol 2. The second pass: hand over to a release the host holds (staged before), checked
 * as a rollback's is (its signature against the keys trusted now; one marked failed refused).
 * The release that serves already is refused (ALREADY_CURRENT).
 */
export const SwitchRequestSchema = z
  .object({
    type: z.literal('switch'),
    deployId: DeployIdSchema,
    app: AppName,
    /** The release to serve: one the host holds. */
    to: ReleaseIdSchema,
    origin: DeployOriginSchema,
  })
  .strict();
export type SwitchRequest = z.infer<typeof SwitchRequestSchema>;

/** What runs in a deploy session on the agent: each ends with one outcome. */
export type SessionRequest = DeployRequest | RollbackRequest | StageRequest | SwitchRequest;

/** Re-attach to a deploy by id: messages numbered above `after` are sent again, then live ones. */
export const AttachRequestSchema = z
  .object({
    type: z.literal('attach'),
    deployId: DeployIdSchema,
    after: z.number().int().nonnegative(),
  })
  .strict();

export const QueryRequestSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('status'), requestId: RequestId }).strict(),
  z.object({ type: z.literal('releases'), requestId: RequestId, app: AppName }).strict(),
]);

export const ClientMessageSchema = z.discriminatedUnion('type', [
  HelloSchema,
  AuthSchema,
  DeployRequestSchema,
  RollbackRequestSchema,
  StageRequestSchema,
  SwitchRequestSchema,
  AttachRequestSchema,
  ...QueryRequestSchema.options,
]);
export type ClientMessage = z.infer<typeof ClientMessageSchema>;

// agent → client

export const ChallengeSchema = z
  .object({
    type: z.literal('challenge'),
    protocol: z.number().int().positive(),
    nonce: Nonce,
    agent: z.string().max(100),
    /** The largest frame the agent takes: the client sizes its artifact frames below it. */
    maxPayload: z.number().int().positive(),
  })
  .strict();

export const WelcomeSchema = z.object({ type: z.literal('welcome'), proof: Mac }).strict();

/** Bytes of the artifact the agent has taken so far. */
export const ProgressEventSchema = z
  .object({
    type: z.literal('progress'),
    at: z.string(),
    app: z.string(),
    bytes: z.number().int().nonnegative(),
    total: z.number().int().nonnegative(),
  })
  .strict();

export const DeployEventSchema = z.discriminatedUnion('type', [
  PhaseEventSchema,
  LogEventSchema,
  ProgressEventSchema,
]);
export type DeployEvent = z.infer<typeof DeployEventSchema>;

/** What a deploy ends with, success or not: durations are per phase, in milliseconds. */
export const DeployOutcomeSchema = z
  .object({
    deployId: DeployIdSchema,
    kind: z.enum(['deploy', 'rollback', 'stage', 'switch']),
    app: z.string(),
    ok: z.boolean(),
    releaseId: z.string().optional(),
    previousReleaseId: z.string().optional(),
    /** The generation that serves after it; none for a stage, which starts none. */
    generation: z.number().int().optional(),
    cold: z.boolean().optional(),
    /** Artifact bytes that crossed the wire: 0 when the agent already had the digest. */
    uploadedBytes: z.number().int().nonnegative(),
    phases: z.record(z.string(), z.number().nonnegative()),
    totalMs: z.number().nonnegative(),
    startedAt: z.string(),
    finishedAt: z.string(),
    error: z
      .object({ code: z.string(), message: z.string(), lines: z.array(z.string()) })
      .strict()
      .optional(),
  })
  .strict();
export type DeployOutcome = z.infer<typeof DeployOutcomeSchema>;

export const ServerMessageSchema = z.discriminatedUnion('type', [
  ChallengeSchema,
  WelcomeSchema,
  z
    .object({
      type: z.literal('accepted'),
      deployId: DeployIdSchema,
      /** True when this request joined a deploy that already existed (a re-attach). */
      attached: z.boolean(),
    })
    .strict(),
  /** Send the artifact now, as binary frames, `bytes` in all. */
  z
    .object({
      type: z.literal('upload'),
      deployId: DeployIdSchema,
      bytes: z.number().int().nonnegative(),
    })
    .strict(),
  z
    .object({
      type: z.literal('event'),
      deployId: DeployIdSchema,
      seq: z.number().int().positive(),
      event: DeployEventSchema,
    })
    .strict(),
  z
    .object({
      type: z.literal('result'),
      deployId: DeployIdSchema,
      seq: z.number().int().positive(),
      outcome: DeployOutcomeSchema,
    })
    .strict(),
  z.object({ type: z.literal('reply'), requestId: RequestId, result: z.unknown() }).strict(),
  z
    .object({
      type: z.literal('error'),
      code: z.string(),
      message: z.string(),
      deployId: z.string().optional(),
      requestId: z.string().optional(),
    })
    .strict(),
]);
export type ServerMessage = z.infer<typeof ServerMessageSchema>;

/** WebSocket close codes the agent uses, beside the standard ones. */
export const CloseCode = {
  /** Policy violation (RFC 6455): bad message, binary out of turn, auth failed. */
  policy: 1008,
  tooBig: 1009,
  goingAway: 1001,
  /** Protocol versions do not overlap. */
  protocolMismatch: 4000,
  authFailed: 4001,
  rateLimited: 4002,
} as const;
