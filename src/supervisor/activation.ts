/**
 * What a process started with inherited listeners is told, the systemd way, and how it says it
 * is ready. Shared by an app's generations and by the agent's own successor in an upgrade.
 */

/** `LISTEN_FDS` and `LISTEN_FDNAMES` for listeners passed in order from fd 3; none for none. */
export function activationEnv(names: readonly string[]): Record<string, string> {
  if (names.length === 0) return {};
  return { LISTEN_FDS: String(names.length), LISTEN_FDNAMES: names.join(':') };
}

/**
 * A `/bin/sh -c` script that runs `setup`, exports each of `pidVars` (LISTEN_PID, WATCHDOG_PID)
 * as the shell's own pid, which spawn cannot know before exec, and then becomes "$@" through
 * `exec` (or a prefix that switches user and then execs).
 */
export function ownPidScript(pidVars: readonly string[], setup = '', exec = 'exec'): string {
  const prefix = setup ? `${setup}; ` : '';
  const assign = pidVars.map((v) => `${v}=$$; `).join('');
  return `${prefix}${assign}export ${pidVars.join(' ')}; ${exec} "$@"`;
}

/**
 * Calls `onReady` when a line `READY=1` comes on `stream`, the pipe whose fd the process found
 * in `BATON_NOTIFY_FD`. A pipe closed without it is not readiness; errors after an exit are not
 * either.
 */
export function onReadyLine(stream: NodeJS.ReadableStream, onReady: () => void): void {
  let buffered = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    buffered = (buffered + chunk).slice(-4096);
    const lines = buffered.split('\n');
    buffered = lines.pop() ?? '';
    if (lines.some((l) => l.trim() === 'READY=1')) onReady();
  });
  stream.on('error', () => undefined);
}

/** The name a listener is passed under between agents (and expected from a systemd socket unit). */
export function fdName(app: { name: string }, listener: string): string {
  return `${app.name}/${listener}`;
}
