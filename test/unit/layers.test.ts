import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { ROOT } from '../../support/paths.js';

/**
 * The layers of `src/`, lowest first: a file imports from its own folder or from a lower layer,
 * never from a higher one nor from another folder of its own layer. docs/architecture.md says
 * what each holds; this list is the one place the order is written.
 */
const LAYERS: readonly (readonly string[])[] = [
  ['errors.ts', 'protocol'], // schemas both sides share, error codes
  ['artifact', 'app'], // the release format and store; the helper apps import
  ['transport', 'supervisor'], // the channel; the agent's apps and generations
  ['deploy', 'agent'], // one host's deploy from the client; the agent wired together
  ['cli', 'action'], // composition roots of the command line and the GitHub Action
];

const SRC = path.join(ROOT, 'src');

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const full = path.join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(full);
    return e.name.endsWith('.ts') ? [full] : [];
  });
}

/** The folder (or top-level file) of `src/` a file belongs to. */
function unitOf(file: string): string {
  return path.relative(SRC, file).split(path.sep)[0]!;
}

function layerOf(unit: string): number {
  const layer = LAYERS.findIndex((units) => units.includes(unit));
  assert.notEqual(layer, -1, `src/${unit} has no layer: add it to LAYERS in ${import.meta.url}`);
  return layer;
}

/** Every relative import of a file, as the file it names (`.js` read as `.ts`). */
function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const specs = [...text.matchAll(/^\s*(?:import|export)[^'"]*?from\s+'(\.[^']+)'/gm)].map(
    (m) => m[1]!,
  );
  return specs.map((s) => path.resolve(path.dirname(file), s.replace(/\.js$/, '.ts')));
}

describe('the layers of src/', () => {
  const files = sourceFiles(SRC);

  it('every import points down a layer or stays in its folder', () => {
    const wrong: string[] = [];
    for (const file of files) {
      const from = unitOf(file);
      for (const target of importsOf(file)) {
        if (!target.startsWith(SRC + path.sep)) continue;
        const to = unitOf(target);
        if (to === from) continue;
        if (layerOf(to) >= layerOf(from))
          wrong.push(`${path.relative(ROOT, file)} imports ${path.relative(ROOT, target)}`);
      }
    }
    assert.deepEqual(wrong, [], `imports that run up or sideways:\n${wrong.join('\n')}`);
  });

  it('no two files import each other, directly or round a loop', () => {
    const graph = new Map(files.map((f) => [f, importsOf(f).filter((t) => files.includes(t))]));
    const cycles: string[] = [];
    const state = new Map<string, 'open' | 'done'>();
    const visit = (file: string, trail: string[]): void => {
      if (state.get(file) === 'done') return;
      if (state.get(file) === 'open') {
        const loop = trail.slice(trail.indexOf(file));
        cycles.push([...loop, file].map((f) => path.relative(SRC, f)).join(' → '));
        return;
      }
      state.set(file, 'open');
      for (const next of graph.get(file) ?? []) visit(next, [...trail, file]);
      state.set(file, 'done');
    };
    for (const file of files) visit(file, []);
    assert.deepEqual(cycles, [], `import loops:\n${cycles.join('\n')}`);
  });

  it('outside src/, what tests, benches and the demo share lives in support/, which imports neither', () => {
    const wrong: string[] = [];
    for (const [folder, never] of [
      ['support', ['test', 'bench']],
      ['bench', ['test']],
    ] as const) {
      for (const file of sourceFiles(path.join(ROOT, folder)))
        for (const target of importsOf(file)) {
          const top = path.relative(ROOT, target).split(path.sep)[0]!;
          if ((never as readonly string[]).includes(top))
            wrong.push(`${path.relative(ROOT, file)} imports ${path.relative(ROOT, target)}`);
        }
    }
    assert.deepEqual(wrong, [], wrong.join('\n'));
  });
});
