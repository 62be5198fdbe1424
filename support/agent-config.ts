// Shared by the tests, the benches and the demo (see README.md in this folder).
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { FIXTURES } from './paths.js';

/** Makes release directories (empty: the fixture command is an absolute path). */
export async function releases(dir: string, ...ids: string[]): Promise<string[]> {
  return Promise.all(
    ids.map(async (id) => {
      const r = path.join(dir, 'releases', id);
      await mkdir(r, { recursive: true });
      return r;
    }),
  );
}

/** Writes `config` as `<dir>/agent.json`; returns its path. */
export async function writeConfig(dir: string, config: unknown): Promise<string> {
  const file = path.join(dir, 'agent.json');
  await writeFile(file, JSON.stringify(config, null, 2));
  return file;
}

/** A config for one app named `web` with a fixture as its command. */
export function webApp(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    name: 'web',
    command: ['node', path.join(FIXTURES, 'app.mjs')],
    listeners: [{ name: 'http', tcp: '127.0.0.1:0' }],
    drain: { timeoutMs: 10_000 },
    // CI runs as root and these fixtures live in private temp dirs; the least-privilege tests
    // (test/integration/privilege-*.test.ts) run apps as an unprivileged user instead.
    allowRoot: true,
    ...overrides,
  };
}
