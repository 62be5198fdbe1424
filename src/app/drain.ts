import type http from 'node:http';
import net from 'node:net';

interface Tracked {
  active: number;
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

  constructor(private readonly server: http.Server) {
    server.on('connection', (socket: net.Socket) => {
      const tracked = { active: 0 };
      this.sockets.set(socket, tracked);
      socket.once('close', () => this.sockets.delete(socket));
    });
    server.prependListener('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
      const tracked = this.sockets.get(req.socket);
      if (tracked) tracked.active++;
      if (this.draining) res.setHeader('Connection', 'close');
      res.once('close', () => {
        if (tracked) tracked.active--;
        if (this.draining && tracked?.active === 0) this.closeLater(req.socket);
      });
    });
  }

  get connections(): number {
    return this.sockets.size;
  }

  async drain(opts: { idleGraceMs: number; deadlineMs: number }): Promise<'drained' | 'deadline'> {
    this.draining = true;
    this.graceMs = opts.idleGraceMs;
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

  /** Ends an idle socket after the grace period unless a request arrived on it meanwhile. */
  private closeLater(socket: net.Socket): void {
    const timer = setTimeout(() => {
      if ((this.sockets.get(socket)?.active ?? 0) === 0) socket.end();
    }, this.graceMs);
    timer.unref();
  }
}
