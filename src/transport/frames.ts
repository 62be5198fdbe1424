import type { RawData, WebSocket } from 'ws';

/** A received WebSocket message as one Buffer, whatever shape ws delivered it in. */
export function frameBytes(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

/**
 * A close reason is at most 123 bytes of UTF-8, and ws throws past that: a message quoting a
 * peer's non-ASCII field name must not become an exception.
 */
export function closeReason(message: string): string {
  let reason = message.slice(0, 120);
  while (Buffer.byteLength(reason) > 123) reason = reason.slice(0, -1);
  return reason;
}

/** Starts the close handshake, and drops the socket if the peer has not finished it in 2 s. */
export function closeSoon(ws: WebSocket, code?: number, message?: string): void {
  if (code !== undefined) ws.close(code, message === undefined ? undefined : closeReason(message));
  setTimeout(() => ws.terminate(), 2000).unref();
}
