#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { BatonError, errorMessage } from '../errors.js';
import {
  agentDeploy,
  agentReload,
  agentRun,
  agentStart,
  agentStatus,
  agentStop,
  agentUpgrade,
  type Output,
} from './agent-commands.js';

const USAGE = `usage: baton agent <command> [--config FILE]
  run                       run the agent in the foreground
  start                     start the agent in the background (PID file in its stateDir)
  stop                      drain every app and stop the agent
  status [--json]           show apps, releases, generations and listeners
  reload [--app NAME]       hot restart of the current release (also: SIGHUP to the agent)
  deploy --app NAME --release DIR [--id ID]
                            hand over to a new release directory, zero drops
  upgrade                   replace the agent process, apps keep serving
options: --config FILE (default $BATON_CONFIG or /etc/baton/agent.yml), --json, --quiet`;

const out: Output = {
  line: (text) => process.stdout.write(text + '\n'),
  json: (value) => process.stdout.write(JSON.stringify(value, null, 2) + '\n'),
};

async function main(argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      config: { type: 'string', short: 'c' },
      json: { type: 'boolean', default: false },
      quiet: { type: 'boolean', short: 'q', default: false },
      app: { type: 'string' },
      release: { type: 'string' },
      id: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  const [group, command] = positionals;
  if (values.help || group !== 'agent' || !command) {
    if (values.help) return out.line(USAGE);
    throw new BatonError('USAGE', `expected "baton agent <command>"\n${USAGE}`);
  }
  const config = values.config ?? process.env.BATON_CONFIG ?? '/etc/baton/agent.yml';
  switch (command) {
    case 'run':
      return agentRun(config);
    case 'start':
      return agentStart(config, out);
    case 'stop':
      return agentStop(config, out);
    case 'status':
      return agentStatus(config, values.json, out);
    case 'reload':
      return agentReload(config, values.app, values.json, values.quiet, out);
    case 'deploy':
      if (!values.app || !values.release)
        throw new BatonError('USAGE', 'deploy needs --app NAME and --release DIR');
      return agentDeploy(
        config,
        {
          app: values.app,
          release: values.release,
          id: values.id,
          json: values.json,
          quiet: values.quiet,
        },
        out,
      );
    case 'upgrade':
      return agentUpgrade(config, out);
    default:
      throw new BatonError('USAGE', `unknown command "agent ${command}"\n${USAGE}`);
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  const code = err instanceof BatonError ? err.code : 'ERROR';
  process.stderr.write(`baton: ${code}: ${errorMessage(err)}\n`);
  if (err instanceof BatonError)
    for (const line of err.lines) process.stderr.write(`  | ${line}\n`);
  process.exitCode = 1;
});
