import { appendFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import type { DeployOrigin } from '../protocol/channel.js';

/** One line of the audit log: who did what, when, from where, and how it ended. */
export type AuditEntry =
  | { event: 'auth-failed' | 'auth-rate-limited'; peer: string; reason: string }
  | { event: 'connected'; peer: string; client: string }
  | {
      event: 'deploy-started' | 'deploy-attached';
      peer: string;
      deployId: string;
      kind: 'deploy' | 'rollback';
      app: string;
      subject: string;
      origin: DeployOrigin;
    }
  | {
      event: 'deploy-finished';
      deployId: string;
      kind: 'deploy' | 'rollback';
      app: string;
      origin: DeployOrigin;
      ok: boolean;
      releaseId?: string;
      previousReleaseId?: string;
      uploadedBytes: number;
      totalMs: number;
      code?: string;
      message?: string;
    };

/**
 * Appends JSON lines to a file only the agent's user can read (mode 0600), in order. A write that
 * fails is reported to `onError` and never stops a deploy.
 */
export class AuditLog {
  private queue: Promise<void> = Promise.resolve();

  constructor(
    readonly file: string,
    private readonly onError: (message: string) => void,
  ) {}

  record(entry: AuditEntry): void {
    const line = JSON.stringify({ at: new Date().toISOString(), ...entry }) + '\n';
    this.queue = this.queue
      .then(async () => {
        await mkdir(path.dirname(this.file), { recursive: true, mode: 0o700 });
        await appendFile(this.file, line, { mode: 0o600 });
      })
      .catch((err: unknown) =>
        this.onError(`audit log ${this.file}: ${err instanceof Error ? err.message : String(err)}`),
      );
  }

  /** Resolves once every entry recorded so far is on disk. */
  flush(): Promise<void> {
    return this.queue;
  }
}
