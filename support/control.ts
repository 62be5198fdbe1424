// Shared by the tests, the benches and the demo (see README.md in this folder).
import { controlRequest } from '../src/cli/control-client.js';
import type { SupervisorEvent } from '../src/protocol/events.js';
import type { AgentStatus, AppStatus } from '../src/protocol/results.js';
import { withDeadline } from './deadline.js';

/** One control request, with events collected. */
export async function control(
  socket: string,
  body: Parameters<typeof controlRequest>[1],
): Promise<{ result: unknown; events: SupervisorEvent[] }> {
  const events: SupervisorEvent[] = [];
  const result = await withDeadline(
    controlRequest(socket, body, (e) => events.push(e)),
    `control ${body.method}`,
  );
  return { result, events };
}

/** One control request expected to fail: its error code, message and lines. */
export async function controlError(
  socket: string,
  body: Parameters<typeof controlRequest>[1],
): Promise<{ code: string; message: string; lines: readonly string[] }> {
  try {
    await control(socket, body);
  } catch (err) {
    const e = err as { code: string; message: string; lines: readonly string[] };
    return { code: e.code, message: e.message, lines: e.lines ?? [] };
  }
  throw new Error(`control ${body.method} succeeded but was expected to fail`);
}

/** The port of an app's first listener, from a `status` result. */
export function listenerPort(status: unknown, app = 'web'): number {
  const s = status as { apps: { name: string; listeners: { address: string }[] }[] };
  const address = s.apps.find((a) => a.name === app)!.listeners[0]!.address;
  return Number(address.slice(address.lastIndexOf(':') + 1));
}

/** The status of one app, from the agent's control socket. */
export async function appStatus(socket: string, app = 'web'): Promise<AppStatus> {
  const status = (await control(socket, { method: 'status' })).result as AgentStatus;
  const found = status.apps.find((a) => a.name === app);
  if (!found) throw new Error(`no app ${app} in status`);
  return found;
}
