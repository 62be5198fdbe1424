import net from 'node:net';

/**
 * A TCP proxy on loopback that the test can cut: every connection through it is destroyed at
 * once (both sides), as a dropped network would. New connections keep being accepted, so a
 * client that reconnects gets through.
 */
export interface CutProxy {
  port: number;
  /** Connections accepted so far. */
  readonly connections: number;
  /** Bytes sent client → server so far, over all connections. */
  readonly upstreamBytes: number;
  /** Cuts every open connection now. */
  cut(): void;
  /** Cuts once, when the client has sent `bytes` more than it has now. */
  cutAfter(bytes: number): void;
  close(): Promise<void>;
}

export async function startCutProxy(targetPort: number): Promise<CutProxy> {
  const open = new Set<net.Socket>();
  let connections = 0;
  let upstreamBytes = 0;
  let cutAt: number | undefined;
  const cut = () => {
    for (const s of open) s.destroy();
    open.clear();
  };
  const server = net.createServer((client) => {
    connections++;
    const upstream = net.connect(targetPort, '127.0.0.1');
    open.add(client);
    open.add(upstream);
    client.on('data', (chunk: Buffer) => {
      upstreamBytes += chunk.length;
      if (cutAt !== undefined && upstreamBytes >= cutAt) {
        cutAt = undefined;
        cut();
        return;
      }
      if (!upstream.write(chunk)) client.pause();
    });
    upstream.on('drain', () => client.resume());
    upstream.pipe(client);
    client.on('end', () => upstream.end());
    for (const s of [client, upstream]) {
      s.on('error', () => undefined);
      s.on('close', () => {
        open.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    get connections() {
      return connections;
    },
    get upstreamBytes() {
      return upstreamBytes;
    },
    cut,
    cutAfter(bytes) {
      cutAt = upstreamBytes + bytes;
    },
    close: () =>
      new Promise<void>((resolve) => {
        cut();
        server.close(() => resolve());
      }),
  };
}
