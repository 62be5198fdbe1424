import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { BatonError, formatIssues } from '../errors.js';

const ReleaseRefSchema = z.object({ id: z.string(), dir: z.string() }).strict();

/** What the state file keeps of a generation, enough for a restarted agent to find it again. */
export const GenerationRecordSchema = z
  .object({
    number: z.number().int(),
    pid: z.number().int().positive(),
    startTime: z.number().optional(),
    releaseId: z.string(),
    releaseDir: z.string(),
    startedAt: z.string(),
    logFile: z.string(),
    /** The generation's `NOTIFY_SOCKET`, bound again by an agent that adopts it. */
    notifySocket: z.string().optional(),
  })
  .strict();

export type GenerationRecord = z.infer<typeof GenerationRecordSchema>;

export const AppStateSchema = z
  .object({
    current: ReleaseRefSchema.optional(),
    previous: ReleaseRefSchema.optional(),
    generation: GenerationRecordSchema.optional(),
    nextGeneration: z.number().int().positive().default(1),
  })
  .strict();
export type AppState = z.infer<typeof AppStateSchema>;

export const AgentStateSchema = z
  .object({
    version: z.literal(1),
    agentPid: z.number().int(),
    updatedAt: z.string(),
    apps: z.record(z.string(), AppStateSchema),
  })
  .strict();
export type AgentState = z.infer<typeof AgentStateSchema>;

/** The agent's state file, always replaced whole by rename so a crash never leaves half of it. */
export class StateFile {
  private state: AgentState = { version: 1, agentPid: process.pid, updatedAt: '', apps: {} };
  private writing: Promise<void> = Promise.resolve();

  constructor(readonly file: string) {}

  async load(): Promise<AgentState> {
    let text: string;
    try {
      text = await readFile(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return this.state;
      throw err;
    }
    const parsed = AgentStateSchema.safeParse(JSON.parse(text));
    if (!parsed.success)
      throw new BatonError(
        'STATE_INVALID',
        `state file ${this.file} is damaged (${formatIssues(parsed.error)}); move it aside to start afresh (running apps will not be re-adopted)`,
      );
    this.state = parsed.data;
    return this.state;
  }

  app(name: string): AppState {
    return (this.state.apps[name] ??= { nextGeneration: 1 });
  }

  /** Applies a change and writes the file; writes are serialised in call order. */
  update(change: (state: AgentState) => void): Promise<void> {
    change(this.state);
    this.state.agentPid = process.pid;
    this.state.updatedAt = new Date().toISOString();
    const text = JSON.stringify(this.state, null, 2) + '\n';
    const write = async () => {
      await mkdir(path.dirname(this.file), { recursive: true, mode: 0o700 });
      const tmp = `${this.file}.${process.pid}.tmp`;
      await writeFile(tmp, text, { mode: 0o600 });
      await rename(tmp, this.file);
    };
    // A failed write fails its caller only: the next one still runs (and writes the whole state).
    const run = this.writing.then(write, write);
    this.writing = run.catch(() => undefined);
    return run;
  }
}
