import { AgentClient } from '../transport/client.js';
import type { Dialer } from '../transport/dialer.js';

/**
 * One host's connection to its agent, kept open between the steps of a fleet deploy
 * (preflight, stage, switch, rollback): one SSH channel, one WebSocket handshake and one
 * login per host instead of one per step. A step that fails on it drops it; the next step
 * opens a new one.
 */
export class AgentLink {
  private client: AgentClient | undefined;
  private opening: Promise<AgentClient> | undefined;

  constructor(
    readonly dialer: Dialer,
    private readonly token: string,
    private readonly heartbeatMs?: number,
  ) {}

  /** The open connection, or a new one when there is none or it closed. */
  async get(): Promise<AgentClient> {
    if (this.client && this.client.failure === undefined) return this.client;
    this.client = undefined;
    this.opening ??= AgentClient.connect(this.dialer, this.token, {
      heartbeatMs: this.heartbeatMs,
    }).finally(() => (this.opening = undefined));
    const client = await this.opening;
    this.client = client;
    return client;
  }

  /** Closes the connection: after a failure on it, or at the end. */
  drop(): void {
    this.client?.close();
    this.client = undefined;
  }
}
