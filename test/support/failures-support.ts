import { execFile } from 'node:child_process';
import { mkdir, open, rm, writeFile, type FileHandle } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { promisify } from 'node:util';
import type { AgentStatus, AppStatus } from '../../src/protocol/results.js';
import { control, FIXTURES } from './harness.js';

/** The fixture that behaves as its release directory's `mode` file says. */
export const BY_MODE = ['node', path.join(FIXTURES, 'by-release-mode.mjs')];

export type Mode =
  'serve' | 'exits-at-start' | 'never-ready' | 'ignores-sigterm' | 'stuck-starting';

/** Makes `<dir>/releases/<id>` with a `mode` file and any other files given. */
export async function modeRelease(
  dir: string,
  id: string,
  mode: Mode,
  files: Record<string, string> = {},
): Promise<string> {
  const release = path.join(dir, 'releases', id);
  await mkdir(release, { recursive: true });
  await writeFile(path.join(release, 'mode'), `${mode}\n`);
  for (const [name, text] of Object.entries(files)) await writeFile(path.join(release, name), text);
  return release;
}

/**
 * A FIFO in a release directory: a generation started from it blocks there, before it listens,
 * until `open()`: a window held open by the test itself, not by a clock. `close()` removes it.
 */
export async function gate(
  dir: string,
): Promise<{ open: () => Promise<void>; close: () => Promise<void> }> {
  const file = path.join(dir, 'gate');
  await promisify(execFile)('mkfifo', [file]);
  let handle: FileHandle | undefined;
  return {
    // Read-write, so neither this open nor the write waits for a reader (Linux): the word stays
    // in the pipe for the generation to read whenever it gets there, as long as we hold it open.
    open: async () => {
      if (handle) return;
      handle = await open(file, 'r+');
      await handle.write('go\n');
    },
    close: async () => {
      await handle?.close();
      await rm(file, { force: true });
    },
  };
}

export async function appStatus(socket: string, app = 'web'): Promise<AppStatus> {
  const status = (await control(socket, { method: 'status' })).result as AgentStatus;
  const found = status.apps.find((a) => a.name === app);
  if (!found) throw new Error(`no app ${app} in status`);
  return found;
}

/**
 * A GET on a new connection that reports the TCP connect apart from the answer: a connect
 * completes in the kernel's queue of a listening socket even when no process accepts yet.
 */
export function getWithConnect(
  port: number,
  pathName = '/',
): {
  connected: Promise<void>;
  response: Promise<{ status: number; body: string }>;
} {
  let onConnect: () => void = () => undefined;
  let onConnectError: (err: Error) => void = () => undefined;
  const connected = new Promise<void>((resolve, reject) => {
    onConnect = resolve;
    onConnectError = reject;
  });
  const response = new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: pathName, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('socket', (socket) => socket.once('connect', onConnect));
    req.on('error', (err) => {
      onConnectError(err);
      reject(err);
    });
  });
  // The caller awaits `response`; a failed connect is reported there as well.
  connected.catch(() => undefined);
  return { connected, response };
}
