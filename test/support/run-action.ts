import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { parse } from 'yaml';
import { ROOT, RUNNER_NODE } from '../../support/paths.js';

export { RUNNER_NODE };

/** The bundle action.yml names, run as the runner runs a node action. */
export const ACTION_MAIN = path.join(ROOT, 'dist/action.mjs');

interface ActionYml {
  inputs: Record<string, { default?: string; required?: boolean }>;
  outputs: Record<string, unknown>;
}

export function actionYml(): ActionYml {
  return parse(readFileSync(path.join(ROOT, 'action.yml'), 'utf8')) as ActionYml;
}

/** One call the fake GitHub API received. */
export interface ApiCall {
  method: string;
  path: string;
  authorization: string | undefined;
  body: Record<string, unknown>;
}

/**
 * A local stand-in for GitHub's REST API (GitHub cannot run here): the two Deployments
 * endpoints the action uses, answered as GitHub documents them, every call recorded.
 * `failWith` makes every call answer that status (e.g. 403: no permission).
 */
export async function startFakeGitHub(
  opts: { failWith?: number } = {},
): Promise<{ url: string; calls: ApiCall[]; close(): Promise<void> }> {
  const calls: ApiCall[] = [];
  let nextId = 1000;
  const server = http.createServer((req, res) => {
    let text = '';
    req.setEncoding('utf8').on('data', (d: string) => (text += d));
    req.on('end', () => {
      const body = text ? (JSON.parse(text) as Record<string, unknown>) : {};
      calls.push({
        method: req.method ?? '',
        path: req.url ?? '',
        authorization: req.headers.authorization,
        body,
      });
      const answer = (status: number, json: unknown) => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(json));
      };
      if (opts.failWith)
        return answer(opts.failWith, { message: 'Resource not accessible by integration' });
      if (req.method === 'POST' && /^\/repos\/[^/]+\/[^/]+\/deployments$/.test(req.url ?? ''))
        return answer(201, { id: nextId++, ...body });
      const status = /^\/repos\/[^/]+\/[^/]+\/deployments\/(\d+)\/statuses$/.exec(req.url ?? '');
      if (req.method === 'POST' && status)
        return answer(201, { id: nextId++, deployment_id: Number(status[1]), ...body });
      answer(404, { message: 'Not Found' });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    calls,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

export interface ActionRun {
  /** GITHUB_RUN_ID of this run: a re-run passes the same one with the next attempt. */
  runId: string;
  code: number | null;
  stdout: string;
  stderr: string;
  outputs: Record<string, string>;
  summary: string;
  /** `::error title=…::message` lines, decoded. */
  errors: { title: string; message: string }[];
  warnings: string[];
}

/** Reads GITHUB_OUTPUT's `name<<DELIM … DELIM` records. */
function parseOutputs(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const m = /^([^<]+)<<(.+)$/.exec(lines[i]!);
    if (!m) continue;
    const value: string[] = [];
    for (i++; i < lines.length && lines[i] !== m[2]; i++) value.push(lines[i]!);
    out[m[1]!] = value.join('\n');
  }
  return out;
}

const unescape = (s: string) =>
  s
    .replace(/%0A/g, '\n')
    .replace(/%0D/g, '\r')
    .replace(/%3A/g, ':')
    .replace(/%2C/g, ',')
    .replace(/%25/g, '%');

/**
 * Runs dist/action.mjs the way the runner does: `node` with every input as `INPUT_<NAME>`
 * (upper case, hyphens kept), action.yml's defaults for the inputs not given, and the
 * GITHUB_* files and variables. `onStdout` sees the log as it comes (to cancel mid-way).
 */
let runs = 0;

export function runAction(
  dir: string,
  inputs: Record<string, string>,
  env: Record<string, string>,
  onStdout?: (chunk: string, child: ReturnType<typeof spawn>) => void,
): Promise<ActionRun> {
  const yml = actionYml();
  const vars: Record<string, string> = {};
  for (const [name, spec] of Object.entries(yml.inputs)) {
    // The runner evaluates `${{ github.token }}`; here a fixed fake token stands for it.
    const value =
      inputs[name] ?? (spec.default?.includes('${{') ? 'ghs_faketoken0123456789' : spec.default);
    if (value !== undefined) vars[`INPUT_${name.toUpperCase()}`] = value;
  }
  for (const name of Object.keys(inputs))
    if (!(name in yml.inputs))
      throw new Error(`the test passes input ${name}, which action.yml lacks`);
  const files = {
    GITHUB_OUTPUT: path.join(dir, 'output'),
    GITHUB_STEP_SUMMARY: path.join(dir, 'summary.md'),
    GITHUB_STATE: path.join(dir, 'state'),
    GITHUB_EVENT_PATH: path.join(dir, 'event.json'),
  };
  const runId = env.GITHUB_RUN_ID ?? String(4242 + runs++);
  return (async () => {
    for (const f of Object.values(files)) await writeFile(f, f.endsWith('.json') ? '{}' : '');
    const child = spawn(RUNNER_NODE, [ACTION_MAIN], {
      cwd: dir,
      env: {
        PATH: process.env.PATH ?? '',
        HOME: process.env.HOME ?? dir,
        GITHUB_ACTIONS: 'true',
        GITHUB_SHA: '0123456789abcdef0123456789abcdef01234567',
        GITHUB_REPOSITORY: 'acme/shop',
        // Each run of a workflow has its own id (a deploy id comes from it).
        GITHUB_RUN_ID: runId,
        GITHUB_RUN_ATTEMPT: '1',
        GITHUB_ACTOR: 'octocat',
        GITHUB_WORKFLOW: 'deploy',
        GITHUB_SERVER_URL: 'https://github.example',
        RUNNER_TEMP: dir,
        ...files,
        ...vars,
        ...env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
      onStdout?.(d, child);
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    const errors = [...stdout.matchAll(/^::error(?: title=([^:]*))?::(.*)$/gm)].map((m) => ({
      title: unescape(m[1] ?? ''),
      message: unescape(m[2] ?? ''),
    }));
    const warnings = [...stdout.matchAll(/^::warning::(.*)$/gm)].map((m) => unescape(m[1] ?? ''));
    return {
      runId,
      code,
      stdout,
      stderr,
      outputs: parseOutputs(await readFile(files.GITHUB_OUTPUT, 'utf8')),
      summary: await readFile(files.GITHUB_STEP_SUMMARY, 'utf8'),
      errors,
      warnings,
    };
  })();
}
