// What `baton` commands print, parsed: the JSON lines of --json output and error codes.

/** Parses the JSON lines of `baton deploy --json` output. */
export function jsonLines(stdout: string): { type: string; [k: string]: unknown }[] {
  return stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { type: string });
}

export interface Outcome {
  ok: boolean;
  kind: string;
  releaseId: string;
  uploadedBytes: number;
  phases: Record<string, number>;
  error?: { code: string; message: string };
}

/** The one `result` line of `baton deploy --json` output (asserts there is exactly one). */
export function outcomeOf(stdout: string): Outcome {
  const results = jsonLines(stdout).filter((l) => l.type === 'result');
  if (results.length !== 1)
    throw new Error(`expected one result, got ${results.length}:\n${stdout}`);
  return results[0]!.outcome as Outcome;
}

/** The phases of the events in `baton deploy --json` output, in order. */
export function phasesOf(stdout: string): string[] {
  return jsonLines(stdout)
    .filter((l) => l.type === 'event')
    .map((l) => (l.event as { phase?: string }).phase)
    .filter((p): p is string => p !== undefined);
}

/** The code in the `baton: CODE: message` line a failed command prints. */
export function errorCodeOf(stderr: string): string | undefined {
  return /baton: ([A-Z_]+):/.exec(stderr)?.[1];
}
