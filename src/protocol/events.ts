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

/** A live event as one plain line, the way the CLI and the action show it. */
export function formatEvent(e: SupervisorEvent): string {
  if (e.type === 'log') return `  ${e.app} ${e.source} | ${e.line}`;
  const parts = [`${e.app}: ${e.phase}`];
  if (e.hook) parts.push(`hook ${e.hook}`);
  if (e.generation !== undefined) parts.push(`gen ${e.generation}`);
  if (e.releaseId) parts.push(`release ${e.releaseId}`);
  if (e.pid !== undefined) parts.push(`pid ${e.pid}`);
  if (e.durationMs !== undefined) parts.push(`${e.durationMs} ms`);
  if (e.detail) parts.push(`(${e.detail})`);
  return parts.join(' ');
}
