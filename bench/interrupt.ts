/**
 * On SIGINT/SIGTERM: runs `cleanup` (stop what the script started, remove its temp dir), then
 * lets the signal end the process as it would have. `dispose()` removes the handlers.
 */
export function cleanupOnSignal(
  cleanup: () => Promise<void>,
  onSignal: (signal: NodeJS.Signals) => void = () => undefined,
): { dispose(): void } {
  const handler = (signal: NodeJS.Signals) => {
    onSignal(signal);
    void cleanup().finally(() => {
      dispose();
      process.kill(process.pid, signal);
    });
  };
  const dispose = () => {
    process.off('SIGINT', handler);
    process.off('SIGTERM', handler);
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
  return { dispose };
}
