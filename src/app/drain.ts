import type http from 'node:http';
import net from 'node:net';

interface Tracked {
  active: number;
  /** When, during a drain, this connection's next answer carries `Connection: close`. */
  closeAt: number;
  /** Since when no request has been in progress on it. */
  idleSince: number;
}

/**
 * Graceful drain for an http.Server, the way that measured zero failed requests: stop accepting
 * (without http.Server.close(), which since Node 19 also closes idle keep-alive sockets at once
 * and races with requests already on their way), answer every request from now on with
 * `Connection: close`, close sockets that stay idle past a short grace, and resolve when no
 * socket is left. At the deadline whatever is left is destroyed.
 */
export class Drainer {
  private readonly sockets = new Map<net.Socket, Tracked>();
  private draining = false;
  private graceMs = 500;
  private drainStartedAt = 0;

  constructor(private readonly server: http.Server) {
    server.on('connection', (socket: net.Socket) => {
      const tracked = { active: 0, closeAt: 0, idleSince: Date.now() };
      this.sockets.set(socket, tracked);
      socket.once('close', () => this.sockets.delete(socket));
    });
    server.prependListener('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
      const tracked = this.sockets.get(req.socket);
      if (tracked) tracked.active++;
      if (this.draining && Date.now() >= (tracked?.closeAt ?? 0))
        res.setHeader('Connection', 'close');
      res.once('close', () => {
        if (!tracked) return;
        tracked.active--;
        if (tracked.active > 0) return;
        tracked.idleSince = Date.now();
        if (this.draining) this.closeLater(req.socket);
      });
    });
  }

  get connections(): number {
    return this.sockets.size;
  }

  async drain(opts: {
    idleGraceMs: number;
    deadlineMs: number;
    spreadMs: number;
  }): Promise<'drained' | 'deadline'> {
    this.draining = true;
    this.graceMs = opts.idleGraceMs;
    // Busy keep-alive connections are sent away one after another across spreadMs, not all at
    // once: the next generation, cold, then takes the load over gradually.
    const now = (this.drainStartedAt = Date.now());
    const n = this.sockets.size;
    let i = 0;
    for (const tracked of this.sockets.values())
      tracked.closeAt = now + (n > 1 ? (opts.spreadMs * i++) / (n - 1) : 0);
    const closed = new Promise<void>((resolve) => {
      // net.Server.prototype.close: stop accepting, keep every open connection.
      net.Server.prototype.close.call(this.server, () => resolve());
    });
    for (const [socket, tracked] of this.sockets) {
      if (tracked.active === 0) this.closeLater(socket);
      else socket.setTimeout(0);
    }
    let timer: NodeJS.Timeout | undefined;
    const outcome = await Promise.race([
      closed.then(() => 'drained' as const),
      new Promise<'deadline'>(
        (resolve) => (timer = setTimeout(() => resolve('deadline'), opts.deadlineMs)),
      ),
    ]);
    clearTimeout(timer);
    if (outcome === 'deadline') for (const socket of this.sockets.keys()) socket.destroy();
    return outcome;
  }

  /** Idle for the whole grace, counted from the drain's start at the earliest, and its turn come. */
  private dueAt(t: Tracked): number {
    return Math.max(Math.max(t.idleSince, this.drainStartedAt) + this.graceMs, t.closeAt);
  }

  /**
   * Ends a socket once it has been idle for the whole grace period (and its turn in the spread
   * has come). Idle at one instant is not enough: a keep-alive client may be sending its next
   * request right then, and ending the socket under it would reset that request.
   */
  private closeLater(socket: net.Socket): void {
    const tracked = this.sockets.get(socket);
    if (!tracked) return;
    const due = this.dueAt(tracked);
    const timer = setTimeout(
      () => {
        const t = this.sockets.get(socket);
        if (!t || t.active > 0) return; // the answer in progress will carry Connection: close
        if (Date.now() >= this.dueAt(t)) socket.end();
        else this.closeLater(socket);
      },
      Math.max(0, due - Date.now()),
    );
    timer.unref();
  }
}
