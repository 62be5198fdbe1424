import { BatonError } from '../errors.js';
import type { SupervisorEvent } from '../protocol/events.js';
import { SecretMasker } from './env-file.js';

/** Beyond this many values an app's secrets are not worth masking one by one: a bug, not a config. */
const MAX_SECRETS = 10_000;

/**
 * The values of an app's `secretEnv` keys, and masking with them. A value is never forgotten
 * while the agent runs: a generation started before the env file changed still holds (and may
 * print) the old one.
 */
export class AppSecrets {
  private readonly values = new Set<string>();
  private current = new SecretMasker([]);

  /** The masker as of now; rebuilt when a new value is learnt. */
  get masker(): SecretMasker {
    return this.current;
  }

  remember(values: readonly string[]): void {
    const before = this.values.size;
    for (const v of values) if (this.values.size < MAX_SECRETS) this.values.add(v);
    if (this.values.size !== before) this.current = new SecretMasker(this.values);
  }

  mask(text: string): string {
    return this.current.mask(text);
  }

  /** The event with secrets masked in its line or detail. */
  maskEvent(event: SupervisorEvent): SupervisorEvent {
    if (!this.current.active) return event;
    if (event.type === 'log') return { ...event, line: this.current.mask(event.line) };
    return event.detail === undefined
      ? event
      : { ...event, detail: this.current.mask(event.detail) };
  }

  /** The same error with secrets masked in its message and lines. */
  maskError(err: unknown): unknown {
    if (!this.current.active || !(err instanceof BatonError)) return err;
    return new BatonError(
      err.code,
      this.current.mask(err.message),
      err.lines?.map((l) => this.current.mask(l)),
    );
  }
}
