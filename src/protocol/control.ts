import { z } from 'zod';
import { SupervisorEventSchema } from './events.js';

/** The agent's local control channel (a Unix socket only its owner can open): one JSON object per line. */
export const CONTROL_MAX_LINE = 64 * 1024;

const Id = z.string().min(1).max(100);

export const ControlRequestSchema = z.discriminatedUnion('method', [
  z.object({ id: Id, method: z.literal('status') }).strict(),
  z
    .object({
      id: Id,
      method: z.literal('deploy'),
      app: z.string().min(1),
      /** Absolute path of the release directory on the agent's host. */
      releaseDir: z.string().startsWith('/', 'releaseDir must be an absolute path'),
      releaseId: z
        .string()
        .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/)
        .optional(),
    })
    .strict(),
  z
    .object({
      id: Id,
      method: z.literal('deploy-artifact'),
      app: z.string().min(1),
      /** Absolute path of a .tar.gz on the agent's host; copied into the store (free if it has it). */
      archive: z.string().startsWith('/', 'archive must be an absolute path'),
      /** Absolute path of its signed manifest (JSON, as `baton pack` writes it). */
      manifest: z.string().startsWith('/', 'manifest must be an absolute path'),
    })
    .strict(),
  z
    .object({
      id: Id,
      method: z.literal('rollback'),
      app: z.string().min(1),
      /** A release the store keeps; the previous release when left out. */
      to: z
        .string()
        .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/)
        .optional(),
      /** Roll back to a release marked failed all the same; its signature is checked still. */
      force: z.boolean().optional(),
    })
    .strict(),
  z.object({ id: Id, method: z.literal('releases'), app: z.string().min(1) }).strict(),
  z.object({ id: Id, method: z.literal('reload'), app: z.string().min(1).optional() }).strict(),
  z.object({ id: Id, method: z.literal('upgrade') }).strict(),
]);
export type ControlRequest = z.infer<typeof ControlRequestSchema>;

export const ControlErrorSchema = z
  .object({
    type: z.literal('error'),
    id: z.string().optional(),
    code: z.string(),
    message: z.string(),
    lines: z.array(z.string()).default([]),
  })
  .strict();

export const ControlResponseSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('event'), id: z.string(), event: SupervisorEventSchema }).strict(),
  z.object({ type: z.literal('result'), id: z.string(), result: z.unknown() }).strict(),
  ControlErrorSchema,
]);
export type ControlResponse = z.infer<typeof ControlResponseSchema>;
