import { readFileSync } from 'node:fs';
import type net from 'node:net';

/** The agent's soft limit on open files, from `/proc/self/limits`; undefined where unreadable. */
export function softFileLimit(limitsText?: string): number | undefined {
  let text = limitsText;
  if (text === undefined) {
    try {
      text = readFileSync('/proc/self/limits', 'utf8');
    } catch {
      return undefined;
    }
  }
  const m = /^Max open files\s+(\d+|unlimited)\s/m.exec(text);
  if (!m) return undefined;
  return m[1] === 'unlimited' ? undefined : Number(m[1]);
}

/**
 * How many channel connections may be open at once: `maxConnections`, lowered so that a
 * quarter of the file limit, and at least 256 descriptors (half on a small limit), stay free
 * for what the agent must never fail to open: apps' sockets and pipes, logs, the state file,
 * the control socket, uploads.
 */
export function connectionCap(maxConnections: number, softLimit: number | undefined): number {
  if (softLimit === undefined) return maxConnections;
  const reserve =
    softLimit >= 1024 ? Math.max(256, Math.floor(softLimit / 4)) : Math.ceil(softLimit / 2);
  return Math.max(1, Math.min(maxConnections, softLimit - reserve));
}

interface Entry {
  peer: string;
  timer: NodeJS.Timeout;
  upgraded: boolean;
}

/**
 * Counts every raw connection the channel's listeners accept, before any byte is read. Past
 * the cap the oldest connection that has not upgraded to a WebSocket yet is closed to make
 * room (an idle holder costs; a newcomer may be the real client); when every one has upgraded,
 * the newcomer is. Each must upgrade within `upgradeTimeoutMs` or is closed.
 */
export class ConnectionGate {
  /** In arrival order: the first not upgraded is the oldest. */
  private readonly open = new Map<net.Socket, Entry>();

  constructor(
    readonly cap: number,
    private readonly upgradeTimeoutMs: number,
    private readonly onRefused: (peer: string, reason: string) => void,
  ) {}

  get size(): number {
    return this.open.size;
  }

  /** Takes in a new raw connection; false when it was refused (and destroyed). */
  admit(socket: net.Socket, peer: string): boolean {
    if (this.open.size >= this.cap) {
      const oldest = [...this.open].find(([, e]) => !e.upgraded);
      if (!oldest) {
        socket.destroy();
        this.onRefused(peer, `${this.cap} connections open (the cap); refused a new one`);
        return false;
      }
      this.drop(oldest[0], oldest[1], 'closed to make room: the connection cap was reached');
    }
    const timer = setTimeout(() => {
      const e = this.open.get(socket);
      if (e && !e.upgraded)
        this.drop(socket, e, `no WebSocket upgrade within ${this.upgradeTimeoutMs} ms`);
    }, this.upgradeTimeoutMs);
    timer.unref();
    this.open.set(socket, { peer, timer, upgraded: false });
    socket.once('close', () => {
      clearTimeout(timer);
      this.open.delete(socket);
    });
    return true;
  }

  /** The connection has become a WebSocket: its pre-upgrade deadline is off. */
  upgraded(socket: net.Socket): void {
    const e = this.open.get(socket);
    if (!e) return;
    e.upgraded = true;
    clearTimeout(e.timer);
  }

  private drop(socket: net.Socket, e: Entry, reason: string): void {
    clearTimeout(e.timer);
    this.open.delete(socket);
    socket.destroy();
    this.onRefused(e.peer, reason);
  }
}
