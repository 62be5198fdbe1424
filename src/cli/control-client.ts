import net from 'node:net';
import type { z } from 'zod';
import { BatonError, formatIssues } from '../errors.js';
import {
  CONTROL_MAX_LINE,
  ControlResponseSchema,
  type ControlRequest,
} from '../protocol/control.js';
import type { SupervisorEvent } from '../protocol/events.js';
import { readLines } from '../protocol/lines.js';

type RequestBody = ControlRequest extends infer R
  ? R extends unknown
    ? Omit<R, 'id'>
    : never
  : never;

/** Sends one request to the agent's control socket; events stream to `onEvent`, the result resolves. */
export async function controlRequest(
  socketPath: string,
  body: RequestBody,
  onEvent: (event: SupervisorEvent) => void = () => undefined,
): Promise<unknown> {
  const id = `${process.pid}-${Date.now()}`;
  return new Promise((resolve, reject) => {
    const socket = net.connect(socketPath);
    let settled = false;
    const settle = (fn: () => void) => {
      if (settled) return;
      settled = true;
      socket.end();
      fn();
    };
    socket.once('error', (err: NodeJS.ErrnoException) =>
      settle(() =>
        reject(
          err.code === 'ENOENT' || err.code === 'ECONNREFUSED'
            ? new BatonError(
                'AGENT_NOT_RUNNING',
                `no agent is listening on ${socketPath}; start one with "baton agent start"`,
              )
            : new BatonError('CONTROL_FAILED', `control socket ${socketPath}: ${err.message}`),
        ),
      ),
    );
    socket.once('close', () =>
      settle(() =>
        reject(
          new BatonError(
            'CONTROL_FAILED',
            'the agent closed the control connection before answering',
          ),
        ),
      ),
    );
    socket.once('connect', () => socket.write(JSON.stringify({ ...body, id }) + '\n'));
    readLines(
      socket,
      CONTROL_MAX_LINE * 16,
      (line) => {
        const parsed = ControlResponseSchema.safeParse(JSON.parse(line));
        if (!parsed.success) return;
        const msg = parsed.data;
        if (msg.type === 'event') onEvent(msg.event);
        else if (msg.type === 'result') settle(() => resolve(msg.result));
        else settle(() => reject(new BatonError(msg.code as never, msg.message, msg.lines)));
      },
      () =>
        settle(() => reject(new BatonError('CONTROL_FAILED', 'the agent sent an overlong line'))),
    );
  });
}

/**
 * What the agent answered, checked against the shape the client expects of it: an agent of
 * another version that answers otherwise gets a clear error, not a crash further on.
 */
export function parseResult<S extends z.ZodType>(
  schema: S,
  value: unknown,
  what: string,
): z.infer<S> {
  const parsed = schema.safeParse(value);
  if (!parsed.success)
    throw new BatonError(
      'CONTROL_FAILED',
      `the agent's answer to ${what} is not what this baton expects (${formatIssues(parsed.error)}); are the agent and this command the same version?`,
    );
  return parsed.data;
}

/** {@link controlRequest}, with its result checked against `schema`. */
export async function controlCall<S extends z.ZodType>(
  socketPath: string,
  body: RequestBody,
  schema: S,
  onEvent?: (event: SupervisorEvent) => void,
): Promise<z.infer<S>> {
  return parseResult(schema, await controlRequest(socketPath, body, onEvent), body.method);
}
