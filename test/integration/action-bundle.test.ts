import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, readdir, readFile, realpath } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { HUNG_MS } from '../../support/deadline.js';
import { ROOT } from '../../support/paths.js';
import { withTempDir } from '../../support/temp-dir.js';

// The bundle as a runner gets it: `npm test` builds it first (pretest), CI checks it is committed.
const BUNDLE = path.join(ROOT, 'dist/action.mjs');
const BUILD_SCRIPT = path.join(ROOT, 'scripts/build.mjs');

function runNode(args: string[], opts: { cwd: string; env?: NodeJS.ProcessEnv }) {
  return spawnSync(process.execPath, args, { ...opts, encoding: 'utf8', timeout: HUNG_MS });
}

function readBundle(): Promise<string> {
  assert.ok(existsSync(BUNDLE), `${BUNDLE} is missing: run npm run build`);
  return readFile(BUNDLE, 'utf8');
}

/** Every directory from `dir` up to the root that holds a node_modules. */
function nodeModulesAbove(dir: string): string[] {
  const found: string[] = [];
  for (let d = dir; ; d = path.dirname(d)) {
    if (existsSync(path.join(d, 'node_modules'))) found.push(d);
    if (path.dirname(d) === d) return found;
  }
}

/** Builds into `outdir` with the project's build script; the files it wrote, by name. */
async function buildInto(outdir: string): Promise<Map<string, Buffer>> {
  const built = runNode([BUILD_SCRIPT, '--outdir', outdir], { cwd: ROOT });
  assert.equal(built.status, 0, `build failed:\n${built.stdout}${built.stderr}`);
  const files = new Map<string, Buffer>();
  for (const name of (await readdir(outdir)).sort())
    files.set(name, await readFile(path.join(outdir, name)));
  return files;
}

describe('the action bundle (dist/action.mjs)', () => {
  it('runs alone, with no node_modules anywhere above it, and fails on a missing input', () =>
    withTempDir(async (dir) => {
      assert.deepEqual(nodeModulesAbove(dir), [], 'the temp dir must have no node_modules above');
      await readBundle();
      await copyFile(BUNDLE, path.join(dir, 'action.mjs'));
      // No INPUT_*, and no GITHUB_*/RUNNER_* either: under a real runner the child must not
      // write to this job's output files. No NODE_PATH: nothing to find modules with.
      const ran = runNode(['action.mjs'], { cwd: dir, env: { PATH: process.env.PATH ?? '' } });
      const output = `${ran.stdout}${ran.stderr}`;
      assert.doesNotMatch(output, /Cannot find (module|package)|ERR_MODULE_NOT_FOUND/, output);
      assert.notEqual(ran.status, 0, output);
      // What @actions/core's setFailed prints for a required input left out.
      assert.match(ran.stdout, /^::error::.*\bhosts\b/m, output);
    }));

  it('names no path of this machine and loads no optional native add-on', async () => {
    const all = (await readBundle()).split('\n');
    // The lines that match, not the 2.6 MB text, go into a failure's message.
    const lines = (hit: string | RegExp) =>
      all.filter((l) => (typeof hit === 'string' ? l.includes(hit) : hit.test(l)));
    for (const local of [ROOT, await realpath(path.join(ROOT, 'node_modules'))])
      assert.deepEqual(lines(local), [], `lines naming ${local}`);
    // esbuild names each module in a comment; one outside the checkout (a node_modules
    // reached through a symlink) would make the bytes depend on how it was installed.
    assert.deepEqual(lines(/^\s*\/\/ \.\.\//), []);
    // cpu-features, bufferutil, utf-8-validate and ssh2's sshcrypto.node are stubbed out,
    // so no require of them is left for Node to resolve at run time.
    assert.deepEqual(lines(/require\(["'](cpu-features|bufferutil|utf-8-validate)["']\)/), []);
    assert.deepEqual(lines(/require\(["'][^"']*\.node["']\)/), []);
  });

  it('builds byte for byte the same from the same sources, and dist/ is that build', () =>
    withTempDir(async (dir) => {
      const first = await buildInto(path.join(dir, 'one'));
      const second = await buildInto(path.join(dir, 'two'));
      assert.deepEqual([...first.keys()], [...second.keys()]);
      assert.ok(first.has('action.mjs'), `built ${[...first.keys()].join(', ')}`);
      for (const [name, bytes] of first)
        assert.ok(bytes.equals(second.get(name)!), `${name} differs between two builds`);
      assert.ok(
        first.get('action.mjs')!.equals(await readFile(BUNDLE)),
        'dist/action.mjs is not what the sources build: run npm run build',
      );
    }));
});
