import { open } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type { SignedManifest } from '../protocol/manifest.js';
import { BatonError, errorCode, errorMessage } from '../errors.js';
import {
  PROTOCOL_SINCE,
  UPLOAD_CHUNK_BYTES,
  type ClientMessage,
  type DeployEvent,
  type DeployOrigin,
  type DeployOutcome,
  type ServerMessage,
} from '../protocol/channel.js';
import { AgentClient } from '../transport/client.js';
import type { Dialer } from '../transport/dialer.js';
import type { AgentLink } from './agent-link.js';

/**
 * One host's part of a deploy, rollback, stage or switch, as the client sends it. A fleet deploy
 * stages on every host first (the store only: nothing handed over), then switches host by host.
 */
export type HostPlan =
  | {
      /** Into the store, then handed over. */
      kind: 'deploy' | 'stage';
      deployId: string;
      app: string;
      manifest: SignedManifest;
      /** The .tar.gz on this machine, sent only if the agent lacks its digest. */
      archive: string;
      origin: DeployOrigin;
    }
  | {
      kind: 'rollback';
      deployId: string;
      app: string;
      to?: string;
      /** Take a release marked failed all the same (its signature is checked still). */
      force?: boolean;
      origin: DeployOrigin;
    }
  | {
      /** To a release the host holds (staged before); refused ALREADY_CURRENT if it serves already. */
      kind: 'switch';
      deployId: string;
      app: string;
      to: string;
      origin: DeployOrigin;
    };

/** Where a host's progress goes: the CLI prints it, the action groups it per host. */
export interface HostReporter {
  event(event: DeployEvent): void;
  /** Bytes this client has handed to the connection so far. */
  sent?(bytes: number, total: number): void;
  /** Reconnects and other notes about the connection itself. */
  note(line: string): void;
}

export interface HostDeployOptions {
  /** Reconnects after a dropped connection before giving up. Default 5. */
  reconnects?: number;
  /** First wait before a reconnect; doubles each time, up to 10 s. Default 500. */
  backoffMs?: number;
  heartbeatMs?: number;
  /**
   * Stops following when aborted: the connection closes (an upload under way stops there, so
   * nothing changes on the host) and DEPLOY_ABORTED is thrown, with no reconnect. A handover
   * already under way on the host runs to its end there all the same.
   */
  signal?: AbortSignal;
  /**
   * An open connection to reuse (a fleet keeps one per host between its steps). It stays open
   * after an outcome, and is dropped after a failure; without it, each call connects anew.
   */
  link?: AgentLink;
}

/** Failures where trying again on a new connection can help; every other one is final. */
const RETRYABLE = new Set([
  'CONNECTION_LOST',
  'SSH_CONNECT_FAILED',
  'SSH_FORWARD_FAILED',
  // Absent for a moment while the agent is upgraded (or restarted).
  'CHANNEL_SOCKET_UNREACHABLE',
  'UPLOAD_INCOMPLETE',
  'ECONNRESET',
  'ECONNREFUSED',
  'EPIPE',
]);

/** Bytes in flight before the sender waits: enough to fill a fast link, not a whole artifact. */
const HIGH_WATER = 8 * 1024 * 1024;

/**
 * Runs one deploy, rollback, stage or switch on one host to a single, final outcome. A dropped
 * connection is re-opened and the deploy re-attached by its id: events resume where they
 * stopped (numbered, so none twice), and an upload cut short starts over. Throws only when the
 * deploy could not be followed to its end (auth, host key, busy, too many drops, a stage or
 * switch to an agent that speaks protocol 1: PROTOCOL_MISMATCH); a deploy that failed or was
 * refused on the host is an outcome with `ok: false` (a switch to the release that serves
 * already: error code ALREADY_CURRENT).
 */
export async function deployToHost(
  dialer: Dialer,
  token: string,
  plan: HostPlan,
  reporter: HostReporter,
  opts: HostDeployOptions = {},
): Promise<DeployOutcome> {
  const reconnects = opts.reconnects ?? 5;
  let backoff = opts.backoffMs ?? 500;
  const state = { lastSeq: 0, accepted: false, uploading: false };
  const aborted = () =>
    new BatonError('DEPLOY_ABORTED', `${plan.kind} ${plan.deployId} stopped: cancelled`);
  const link = opts.link;
  for (let attempt = 0; ; attempt++) {
    let client: AgentClient | undefined;
    let keep = false;
    const stop = () => (link ? link.drop() : client?.close());
    try {
      if (opts.signal?.aborted) throw aborted();
      opts.signal?.addEventListener('abort', stop, { once: true });
      client = link
        ? await link.get()
        : await AgentClient.connect(dialer, token, { heartbeatMs: opts.heartbeatMs });
      if (opts.signal?.aborted) throw aborted();
      checkProtocol(client, plan.kind, dialer.describe);
      const outcome = await follow(client, plan, reporter, state);
      keep = link !== undefined;
      return outcome;
    } catch (err) {
      if (opts.signal?.aborted) throw aborted();
      const code = errorCode(err) ?? '';
      // openSsh retries its own connects; past those, a host that was never reached is final.
      const again = RETRYABLE.has(code) && (code !== 'SSH_CONNECT_FAILED' || state.accepted);
      if (!again || attempt >= reconnects) throw err;
      reporter.note(
        `${errorMessage(err)}; reconnecting in ${(backoff / 1000).toFixed(1)} s (${attempt + 1} of ${reconnects})`,
      );
      await sleep(backoff, undefined, opts.signal && { signal: opts.signal }).catch(() => {
        throw aborted();
      });
      backoff = Math.min(backoff * 2, 10_000);
    } finally {
      opts.signal?.removeEventListener('abort', stop);
      if (!keep && link) link.drop();
      else if (!keep) client?.close();
    }
  }
}

/**
 * An agent from before a request would refuse it (its schema does not know it): say so in terms
 * of what to do, before anything is sent.
 */
function checkProtocol(client: AgentClient, kind: HostPlan['kind'], where: string): void {
  if (kind !== 'stage' && kind !== 'switch') return;
  const since = PROTOCOL_SINCE[kind];
  if (client.protocol >= since) return;
  throw new BatonError(
    'PROTOCOL_MISMATCH',
    `the agent at ${where} (${client.agentName}) speaks protocol ${client.protocol}; ${kind} needs protocol ${since}: upgrade the agent there (baton agent upgrade) and try again. Nothing was sent`,
  );
}

/** The request that starts (or re-attaches to) the plan's session. */
function requestFor(plan: HostPlan): ClientMessage {
  const { deployId, app, origin } = plan;
  switch (plan.kind) {
    case 'deploy':
    case 'stage':
      return { type: plan.kind, deployId, app, manifest: plan.manifest, origin };
    case 'switch':
      return { type: 'switch', deployId, app, to: plan.to, origin };
    case 'rollback':
      return {
        type: 'rollback',
        deployId,
        app,
        ...(plan.to !== undefined && { to: plan.to }),
        // Only when set: an agent from before the field refuses any message that has it.
        ...(plan.force === true && { force: true }),
        origin,
      };
  }
}

interface FollowState {
  lastSeq: number;
  accepted: boolean;
  uploading: boolean;
}

function follow(
  client: AgentClient,
  plan: HostPlan,
  reporter: HostReporter,
  state: FollowState,
): Promise<DeployOutcome> {
  let unsubscribe = () => {};
  return new Promise<DeployOutcome>((resolve, reject) => {
    const mine = (msg: ServerMessage) => 'deployId' in msg && msg.deployId === plan.deployId;
    const send = (how: 'request' | 'attach') => {
      if (how === 'attach')
        return client.send({ type: 'attach', deployId: plan.deployId, after: state.lastSeq });
      client.send(requestFor(plan));
    };
    unsubscribe = client.onMessage((msg) => {
      if (!mine(msg)) return;
      switch (msg.type) {
        case 'accepted':
          // A new session numbers its events from 1 again.
          if (!msg.attached) state.lastSeq = 0;
          state.accepted = true;
          return;
        case 'upload':
          if (plan.kind !== 'deploy' && plan.kind !== 'stage')
            return reject(
              new BatonError(
                'PROTOCOL_VIOLATION',
                `the agent asked for an upload during a ${plan.kind}`,
              ),
            );
          // Uploading until the agent says it received it all: bytes handed to the socket may
          // still be lost with it.
          state.uploading = true;
          return void sendFile(client, plan.archive, msg.bytes, reporter).catch(reject);
        case 'event':
          if (msg.seq <= state.lastSeq) return;
          state.lastSeq = msg.seq;
          if (msg.event.type === 'phase' && msg.event.phase === 'received') state.uploading = false;
          return reporter.event(msg.event);
        case 'result':
          if (msg.seq <= state.lastSeq) return;
          state.lastSeq = msg.seq;
          // Our own upload was cut: nothing changed on the host, so the deploy runs again.
          if (
            msg.outcome.error?.code === 'UPLOAD_INCOMPLETE' &&
            (plan.kind === 'deploy' || plan.kind === 'stage')
          ) {
            // That session is over: the next connection asks anew, which starts a fresh one.
            state.accepted = false;
            state.uploading = false;
            return reject(new BatonError('UPLOAD_INCOMPLETE', msg.outcome.error.message));
          }
          return resolve(msg.outcome);
        case 'error':
          // The agent restarted and forgot the deploy: ask again; the store may already have it.
          if (msg.code === 'DEPLOY_UNKNOWN') return send('request');
          return reject(new BatonError(msg.code as never, msg.message));
        default:
          return;
      }
    });
    // Off again when this step ends: a kept connection carries the next step.
    const offClose = client.onClose(reject);
    const offMessage = unsubscribe;
    unsubscribe = () => {
      offMessage();
      offClose();
    };
    // After a drop past the upload, attach and resume; otherwise (re)send the request itself.
    send(state.accepted && !state.uploading ? 'attach' : 'request');
    // A kept connection carries the next step's messages: this one stops listening.
  }).finally(() => unsubscribe());
}

/**
 * Streams the archive as binary frames, never more than HIGH_WATER bytes in flight. The frames
 * come from a fixed set of buffers, each reused once the socket took it: a gigabyte upload
 * allocates 8 MiB, not a gigabyte of short-lived chunks for the collector.
 */
async function sendFile(
  client: AgentClient,
  file: string,
  total: number,
  reporter: HostReporter,
): Promise<void> {
  const handle = await open(file, 'r');
  try {
    const size = (await handle.stat()).size;
    if (size !== total)
      throw new BatonError(
        'DIGEST_MISMATCH',
        `${file} has ${size} bytes but its manifest says ${total}: it changed after packing; pack it again`,
      );
    // Frames stay under the agent's limit, whatever it is configured to.
    const chunk = Math.max(1024, Math.min(UPLOAD_CHUNK_BYTES, client.maxFrame - 1024));
    // Buffers are made as the upload needs them, up to HIGH_WATER: a small artifact (or a
    // fleet of fifty hosts) does not pay for eight megabytes each.
    const most = Math.min(Math.ceil(HIGH_WATER / chunk), Math.ceil(total / chunk));
    const free: Buffer[] = [];
    let made = 0;
    let wake: (() => void) | undefined;
    let failed: Error | undefined;
    let sent = 0;
    while (sent < total) {
      if (free.length === 0 && made < most) {
        free.push(Buffer.allocUnsafe(Math.min(chunk, total)));
        made++;
      }
      while (free.length === 0 && !failed) await new Promise<void>((resolve) => (wake = resolve));
      if (failed) throw failed;
      const buf = free.pop()!;
      const { bytesRead } = await handle.read(buf, 0, Math.min(buf.length, total - sent), sent);
      if (bytesRead === 0)
        throw new BatonError('DIGEST_MISMATCH', `${file} ended early: it changed after packing`);
      client.sendBytes(buf.subarray(0, bytesRead)).then(
        () => {
          free.push(buf);
          wake?.();
        },
        (err: unknown) => {
          failed ??= err instanceof Error ? err : new Error(String(err));
          wake?.();
        },
      );
      sent += bytesRead;
      reporter.sent?.(sent, total);
    }
  } finally {
    await handle.close();
  }
}
