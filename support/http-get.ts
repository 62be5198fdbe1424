// Shared by the tests, the benches and the demo (see README.md in this folder).
import http from 'node:http';

/** One GET to 127.0.0.1:port, on a new connection unless an `agent` is given. */
export function get(
  port: number,
  pathName = '/',
  agent: http.Agent | false = false,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: pathName, agent }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('error', reject);
  });
}

/**
 * A GET on a new connection that reports the TCP connect apart from the answer: a connect

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
