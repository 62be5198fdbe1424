import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { parseDocument } from 'yaml';
import { z } from 'zod';
import { ROOT } from '../../support/paths.js';

/**
 * action.yml is the action's interface; docs/action.md, the README and examples/ describe it to
 * users. These tests keep them equal: a renamed input, a changed default or an example passing
 * an input that does not exist fails here instead of in someone's workflow.
 */

// GitHub reads every default as a string; YAML may still write one as a number or a boolean.
const Scalar = z.union([z.string(), z.number(), z.boolean()]).transform(String);

/** Loose on purpose: the checks below name what is missing, a schema error would not. */
const ActionSchema = z.object({
  inputs: z.record(
    z.string(),
    z.object({
      description: z.string().optional(),
      required: z.boolean().optional(),
      default: Scalar.optional(),
    }),
  ),
  outputs: z.record(z.string(), z.object({ description: z.string().optional() })),
  runs: z.object({ using: z.string(), main: z.string() }),
});
type Action = z.infer<typeof ActionSchema>;

/** A YAML file's value; a syntax error fails the test with the parser's message. */
function readYaml(file: string, text = readFileSync(file, 'utf8')): unknown {
  const doc = parseDocument(text);
  assert.deepEqual(
    doc.errors.map((e) => e.message),
    [],
    `${path.relative(ROOT, file)} is not valid YAML`,
  );
  return doc.toJS() as unknown;
}

const ACTION: Action = ActionSchema.parse(readYaml(path.join(ROOT, 'action.yml')));
const INPUTS = Object.keys(ACTION.inputs);
const REQUIRED = INPUTS.filter((name) => ACTION.inputs[name]!.required === true);
const DOCS = path.join(ROOT, 'docs/action.md');

/** The cells of a markdown table row (`\|` inside a cell is not a separator). */
function cells(line: string): string[] {
  return line
    .trim()
    .replace(/^\|/, '')
    .replace(/\|$/, '')
    .split(/(?<!\\)\|/)
    .map((c) => c.trim().replace(/\\\|/g, '|'));
}

/** A cell that is one code span gives its content; any other cell, its text. */
function unquote(cell: string): string {
  const m = /^`([^`]*)`$/.exec(cell);
  return m ? m[1]! : cell;
}

/**
 * The table under the heading `## <title>` of a markdown file: its header cells and its rows.
 * Only the first table of the section counts.
 */
function table(markdown: string, title: string): { header: string[]; rows: string[][] } {
  const lines = markdown.split('\n');
  const start = lines.findIndex((l) => l.trim() === `## ${title}`);
  assert.notEqual(start, -1, `docs/action.md has no "## ${title}" section`);
  const section: string[] = [];
  for (const line of lines.slice(start + 1)) {
    if (/^#{1,2} /.test(line)) break;
    section.push(line);
  }
  const first = section.findIndex((l) => l.trim().startsWith('|'));
  assert.notEqual(first, -1, `the "${title}" section of docs/action.md has no table`);
  const rows: string[][] = [];
  for (const line of section.slice(first)) {
    if (!line.trim().startsWith('|')) break;
    rows.push(cells(line));
  }
  const [header, separator, ...body] = rows;
  assert.ok(header && separator && /^[\s:-]+$/.test(separator.join('')), `"${title}": no header`);
  return { header, rows: body };
}

/** Rows keyed by their first cell, which must be one code span naming the input or output. */
function byName(title: string, rows: string[][]): Map<string, string[]> {
  const named = new Map<string, string[]>();
  for (const row of rows) {
    const m = /^`([a-z0-9-]+)`$/.exec(row[0] ?? '');
    assert.ok(m, `"${title}" row "${row.join(' | ')}": the first cell must be \`name\``);
    assert.ok(!named.has(m[1]!), `"${title}" names ${m[1]} twice`);
    named.set(m[1]!, row);
  }
  return named;
}

describe('docs/action.md against action.yml', () => {
  const markdown = readFileSync(DOCS, 'utf8');

  it('lists every input, and only those, with its required flag and default as action.yml says', () => {
    const { header, rows } = table(markdown, 'Inputs');
    assert.deepEqual(header, ['input', 'required', 'default', 'meaning']);
    const documented = byName('Inputs', rows);
    assert.deepEqual([...documented.keys()].sort(), [...INPUTS].sort(), 'the inputs differ');
    for (const [name, input] of Object.entries(ACTION.inputs)) {
      const [, required, dflt, meaning] = documented.get(name)!;
      assert.equal(required, input.required === true ? 'yes' : 'no', `${name}: required`);
      assert.equal(unquote(dflt ?? ''), input.default ?? '', `${name}: default`);
      assert.ok(meaning, `${name}: no meaning given`);
    }
  });

  it('lists every output, and only those, each with a meaning', () => {
    const { header, rows } = table(markdown, 'Outputs');
    assert.deepEqual(header, ['output', 'meaning']);
    const documented = byName('Outputs', rows);
    assert.deepEqual(
      [...documented.keys()].sort(),
      Object.keys(ACTION.outputs).sort(),
      'the outputs differ',
    );
    for (const [name, [, meaning]] of documented) assert.ok(meaning, `${name}: no meaning given`);
  });
});

/** Every step, anywhere in a YAML value, that runs this action (`uses: <owner>/baton@<ref>`). */
function batonSteps(value: unknown): Record<string, unknown>[] {
  if (Array.isArray(value)) return value.flatMap(batonSteps);
  if (typeof value !== 'object' || value === null) return [];
  const node = value as Record<string, unknown>;
  const own = typeof node.uses === 'string' && /\/baton@[^/@]+$/.test(node.uses) ? [node] : [];
  return [...own, ...Object.values(node).flatMap(batonSteps)];
}

/** The `with:` keys of a step that action.yml does not declare. */
function undeclared(step: Record<string, unknown>): string[] {
  const withKeys = Object.keys((step.with as Record<string, unknown> | null | undefined) ?? {});
  return withKeys.filter((key) => !INPUTS.includes(key));
}

function yamlBlocks(markdown: string): string[] {
  return [...markdown.matchAll(/^```ya?ml\n([\s\S]*?)^```$/gm)].map((m) => m[1]!);
}

describe('examples/', () => {
  const dir = path.join(ROOT, 'examples');
  const files = readdirSync(dir)
    .filter((f) => /\.ya?ml$/.test(f))
    .map((f) => path.join(dir, f));

  it('holds workflows', () => {
    assert.ok(files.length > 0, 'examples/ has no .yml file');
  });

  for (const file of files) {
    const name = path.relative(ROOT, file);
    it(`${name}: a workflow whose baton steps pass only declared inputs, and every required one`, () => {
      const workflow = readYaml(file) as Record<string, unknown> | null;
      assert.ok(workflow && typeof workflow === 'object', `${name} is not a mapping`);
      assert.ok('on' in workflow, `${name} has no on:`);
      assert.ok(workflow.jobs && typeof workflow.jobs === 'object', `${name} has no jobs:`);
      const steps = batonSteps(workflow.jobs);
      assert.ok(steps.length > 0, `${name} has no step that uses baton`);
      for (const step of steps) {
        assert.deepEqual(undeclared(step), [], `${name}: inputs action.yml does not declare`);
        const given = Object.keys((step.with as Record<string, unknown> | null) ?? {});
        const missing = REQUIRED.filter((input) => !given.includes(input));
        assert.deepEqual(missing, [], `${name}: required inputs not given`);
      }
    });

    it(`${name}: grants contents: read and deployments: write`, () => {
      const workflow = readYaml(file) as { permissions?: unknown; jobs: Record<string, unknown> };
      const jobs = Object.values(workflow.jobs) as { permissions?: unknown }[];
      for (const job of jobs)
        assert.deepEqual(
          job.permissions ?? workflow.permissions,
          { contents: 'read', deployments: 'write' },
          `${name}: permissions`,
        );
    });
  }

  it('the YAML in README.md and docs/action.md passes only declared inputs to baton', () => {
    let seen = 0;
    for (const doc of ['README.md', 'docs/action.md']) {
      const file = path.join(ROOT, doc);
      yamlBlocks(readFileSync(file, 'utf8')).forEach((block, i) => {
        for (const step of batonSteps(readYaml(file, block))) {
          seen++;
          assert.deepEqual(undeclared(step), [], `${doc}, YAML block ${i + 1}`);
        }
      });
    }
    assert.ok(seen > 0, 'no baton step found in the docs: is the block pattern still right?');
  });
});

describe('action.yml', () => {
  it('describes every input and output', () => {
    for (const [kind, entries] of [
      ['input', ACTION.inputs],
      ['output', ACTION.outputs],
    ] as const)
      for (const [name, entry] of Object.entries(entries))
        assert.ok(entry.description?.trim(), `${kind} ${name} has no description`);
  });

  it('runs on node24 from a bundle under dist/', () => {
    assert.equal(ACTION.runs.using, 'node24');
    const main = path.posix.normalize(ACTION.runs.main);
    assert.ok(main.startsWith('dist/'), `runs.main is ${ACTION.runs.main}, not under dist/`);
  });
});
