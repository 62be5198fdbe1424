import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { FIXTURES } from '../../support/paths.js';

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
