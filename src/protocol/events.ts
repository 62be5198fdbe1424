import { z } from 'zod';

/** Steps of a handover, in the order they happen. */
export const PhaseSchema = z.enum([
  'received',
  'verified',
  'unpacked',
  'hook-started',
  'hook-finished',
  'generation-started',
  'ready',
  'switched',
  'draining',
  'drained',
  'done',
  'failed',
  'crashed',
  'restarting',
  'adopted',
  'stopped',
]);
export type Phase = z.infer<typeof PhaseSchema>;

export const PhaseEventSchema = z
  .object({
    type: z.literal('phase'),
    at: z.string(),
    app: z.string(),
    phase: PhaseSchema,
    generation: z.number().int().optional(),
    releaseId: z.string().optional(),
    hook: z.string().optional(),
    pid: z.number().int().optional(),
    durationMs: z.number().optional(),
    detail: z.string().optional(),
    code: z.string().optional(),
  })
  .strict();
export type PhaseEvent = z.infer<typeof PhaseEventSchema>;

export const LogEventSchema = z
  .object({
    type: z.literal('log'),
    at: z.string(),
    app: z.string(),
    /** `gen-3` for a generation's output, `hook:beforeRestart` for a hook's. */
    source: z.string(),
    line: z.string(),
  })
  .strict();
export type LogEvent = z.infer<typeof LogEventSchema>;

export const SupervisorEventSchema = z.discriminatedUnion('type', [
  PhaseEventSchema,
  LogEventSchema,
]);
export type SupervisorEvent = z.infer<typeof SupervisorEventSchema>;

/** Where supervisor events go: JSON lines in the agent, the deploy stream later. */
export type Reporter = (event: SupervisorEvent) => void;

type Omitted<T> = T extends unknown ? Omit<T, 'at'> : never;
/** Stamps an event with the time and passes it on. */
export function report(reporter: Reporter, event: Omitted<SupervisorEvent>): void {
  reporter({ ...event, at: new Date().toISOString() });
}
