// Shared by the tests, the benches and the demo (see README.md in this folder).
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root, from build/support/. */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
/** The built CLI, run as a child process the way a user runs it. */
export const CLI = path.join(ROOT, 'build/src/cli/main.js');
/** The fixture apps (small scripts that behave one way each). */
export const FIXTURES = path.join(ROOT, 'test/fixtures');
