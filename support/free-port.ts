// Shared by the tests, the benches and the demo (see README.md in this folder).
import net from 'node:net';

/** A loopback port free right now, for tests that need a fixed address across agents. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}
