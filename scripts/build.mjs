// @ts-check
// Bundles the action (and, later, the CLI) into dist/: one self-contained ESM file per entry,
// runnable where no node_modules exists. `node scripts/build.mjs [--outdir DIR]` (default dist).
// Same sources, same bytes: CI rebuilds and refuses a dist/ that differs from what is committed.
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { build } from 'esbuild';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** Each bundle: its source entry, and its name in the output directory (`<out>.mjs`). */
const ENTRIES = [{ in: 'action/main.ts', out: 'action' }];

// Optional native add-ons that ssh2 and ws load inside try/catch, falling back to pure JS.
// A runner may lack them (and a .node file cannot be bundled), so each resolves to a module
// that throws: the bundle never looks for them and always takes the pure-JS path.
const OPTIONAL_NATIVE = /^(cpu-features|bufferutil|utf-8-validate)$|\/sshcrypto\.node$/;

/** @type {import('esbuild').Plugin} */
const optionalNativeAbsent = {
  name: 'optional-native-absent',
  setup(b) {
    b.onResolve({ filter: OPTIONAL_NATIVE }, (args) => ({
      path: args.path,
      namespace: 'optional-native',
    }));
    b.onLoad({ filter: /.*/, namespace: 'optional-native' }, (args) => ({
      contents: `throw Object.assign(new Error(${JSON.stringify(`${args.path} is not bundled`)}), { code: 'MODULE_NOT_FOUND' });`,
      loader: 'js',
    }));
  },
};

// ESM has no require/__filename/__dirname; the CommonJS code bundled in uses require for node
// builtins (ssh2, ws, undici), and ssh2's lib/agent.js reads __dirname as it loads.
const BANNER = [
  "import { createRequire as __batonCreateRequire } from 'node:module';",
  "import { dirname as __batonDirname } from 'node:path';",
  "import { fileURLToPath as __batonFileURLToPath } from 'node:url';",
  'const require = __batonCreateRequire(import.meta.url);',
  'const __filename = __batonFileURLToPath(import.meta.url);',
  'const __dirname = __batonDirname(__filename);',
].join('\n');

const { values } = parseArgs({ options: { outdir: { type: 'string', default: 'dist' } } });
const outdir = path.resolve(values.outdir);

await build({
  absWorkingDir: ROOT,
  entryPoints: ENTRIES,
  outdir,
  outExtension: { '.js': '.mjs' },
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  banner: { js: BANNER },
  plugins: [optionalNativeAbsent],
  // The path comments esbuild writes name each module relative to ROOT. Without this they
  // follow a symlinked node_modules (a worktree's) to wherever it points, and the bytes
  // would depend on how this checkout was installed.
  preserveSymlinks: true,
  sourcemap: false,
  minify: false,
  logLevel: 'warning',
});

for (const entry of ENTRIES) {
  const file = path.join(outdir, `${entry.out}.mjs`);
  const kib = ((await stat(file)).size / 1024).toFixed(0);
  const shown = path.relative(process.cwd(), file);
  console.log(`${shown.startsWith('..') ? file : shown}  ${kib} KiB  (from ${entry.in})`);
}
