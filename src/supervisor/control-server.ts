import { chmod, rm } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { BatonError, errorMessage, formatIssues } from '../errors.js';
import {
  CONTROL_MAX_LINE,
  ControlRequestSchema,
  type ControlRequest,
  type ControlResponse,
} from '../protocol/control.js';
import { readLines } from '../protocol/lines.js';
import type { Agent } from './agent.js';

export interface ControlHandlers {
  upgrade(): Promise<unknown>;
}

/**
 * The agent's local control channel: a Unix socket in the state directory, mode 0600 (the
 * directory is 0711: others may pass through, not list), so only the agent's own user can talk
 * to it. Each line is validated; a bad one
 * gets an error line, never a crash. Events of the app concerned stream back during a request.
 */
export class ControlServer {
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();

  constructor(
    private readonly agent: Agent,
    private readonly handlers: ControlHandlers,
  ) {
    this.server = net.createServer((socket) => this.serve(socket));
  }

  private file: string | undefined;

  async listen(file: string): Promise<void> {
    // The PID file is ours, so a socket file left here belongs to a dead or departed agent.
    await rm(file, { force: true });
    // The socket file is created 0600 from the start (umask), not loosened until a chmod.
    const umask = process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        this.server.once('error', reject);
        this.server.listen(file, () => {
          this.server.off('error', reject);
          resolve();
        });
      });
    } finally {
      process.umask(umask);
    }
    await chmod(file, 0o600);
    this.file = file;
  }

  /** Stops taking new clients and frees the socket path; clients already connected stay. */
  async stopListening(): Promise<void> {
    // Not waiting for close's callback: it fires only once every client has gone, and the
    // client asking for an upgrade is still here.
    if (this.server.listening) this.server.close();
    // Forget the path once removed: after an upgrade it belongs to the successor.
    const file = this.file;
    this.file = undefined;
    if (file) await rm(file, { force: true }).catch(() => undefined);
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.end();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    if (this.file) await rm(this.file, { force: true }).catch(() => undefined);
  }

  private serve(socket: net.Socket): void {
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    const send = (msg: ControlResponse) => {
      if (!socket.destroyed) socket.write(JSON.stringify(msg) + '\n');
    };
    let queue = Promise.resolve();
    readLines(
      socket,
      CONTROL_MAX_LINE,
      (line) => {
        queue = queue.then(() => this.handle(line, send));
      },
      () => {
        send({
          type: 'error',
          code: 'CONTROL_FAILED',
          message: `request longer than ${CONTROL_MAX_LINE} bytes`,
          lines: [],
        });
        socket.end();
      },
    );
  }

  private async handle(line: string, send: (msg: ControlResponse) => void): Promise<void> {
    let raw: unknown;
    try {
      raw = JSON.parse(line);
    } catch {
      send({ type: 'error', code: 'CONTROL_FAILED', message: 'request is not JSON', lines: [] });
      return;
    }
    const parsed = ControlRequestSchema.safeParse(raw);
    if (!parsed.success) {
      send({
        type: 'error',
        code: 'CONTROL_FAILED',
        message: `bad request: ${formatIssues(parsed.error)}`,
        lines: [],
      });
      return;
    }
    const req = parsed.data;
    const app = 'app' in req ? req.app : undefined;
    const unsubscribe = this.agent.subscribe((event) => {
      if (req.method !== 'status' && (app === undefined || event.app === app))
        send({ type: 'event', id: req.id, event });
    });
    try {
      send({ type: 'result', id: req.id, result: await this.dispatch(req) });
    } catch (err) {
      send({
        type: 'error',
        id: req.id,
        code: err instanceof BatonError ? err.code : 'CONTROL_FAILED',
        message: errorMessage(err),
        lines: err instanceof BatonError ? [...err.lines] : [],
      });
    } finally {
      unsubscribe();
    }
  }

  /** Runs a request from inside the agent (a signal), logging instead of answering. */
  async dispatchLocal(req: ControlRequest): Promise<void> {
    await this.handle(JSON.stringify(req), (msg) => {
      if (msg.type !== 'event')
        process.stdout.write(JSON.stringify({ at: new Date().toISOString(), ...msg }) + '\n');
    });
  }

  private dispatch(req: ControlRequest): Promise<unknown> {
    switch (req.method) {
      case 'status':
        return Promise.resolve(this.agent.status());
      case 'deploy':
        return this.agent.deploy(req.app, {
          id: req.releaseId ?? path.basename(req.releaseDir),
          dir: path.resolve(req.releaseDir),
        });
      case 'deploy-artifact':
        return this.agent.deployArtifact(req.app, req.archive, req.manifest);
      case 'rollback':
        return this.agent.rollback(req.app, req.to, { force: req.force === true });
      case 'releases':
        return this.agent.releases(req.app);
      case 'reload':
        return this.agent.reload(req.app);
      case 'upgrade':
        return this.handlers.upgrade();
    }
  }
}
