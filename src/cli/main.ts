#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { BatonError, errorMessage } from '../errors.js';
import { keygenCommand, packCommand, tokenCommand } from './artifact-commands.js';
import { remoteDeploy, remoteQuery, remoteRollback } from './remote-commands.js';
import { isRemote, REMOTE_OPTIONS, REMOTE_USAGE } from './remote-options.js';
import {
  agentDeploy,
  agentDeployArtifact,
  agentReleases,
  agentRollback,
  agentReload,
  agentRun,
  agentStart,
  agentStatus,
  agentStop,
  agentUpgrade,
  printReleases,
  printStatus,
  type Output,
} from './agent-commands.js';
import { agentInstall, DEFAULT_UNIT_DIR, SERVICE_NAME } from './install-command.js';
import { z } from 'zod';
import { AgentStatusSchema, ReleaseInfoSchema } from '../protocol/results.js';
import { parseResult } from './control-client.js';

const USAGE = `usage: baton <command>
  deploy <dir|archive> --app NAME (--host USER@HOST | --agent URL) [--key FILE] [--manifest FILE]
         [--release-id ID] [--git-sha SHA] [--deploy-id ID]
                                              pack (a directory) and sign, upload if the host
                                              lacks it, hand over; live progress
  rollback --app NAME [--to RELEASE] [--force] (--host … | --agent …)
                                              back to the previous (or a kept) release;
                                              --force: even one marked failed (never one
                                              whose signing key is no longer trusted)
  releases --app NAME (--host … | --agent …)  the releases the host keeps
  status (--host … | --agent …)               apps, releases, generations on the host
    (rollback, releases and status without --host/--agent: this host's agent, as \`baton agent …\`)
  keygen [--out DIR]                          write a signing key pair (DIR default .)
  pack <dir|archive> --app NAME [--out DIR] [--key FILE] [--release-id ID] [--git-sha SHA]
                                              make <release>.tar.gz and its signed manifest
                                              (key also from $BATON_SIGNING_KEY)
  agent <command> [--config FILE]             (default $BATON_CONFIG or /etc/baton/agent.yml)
    run                       run the agent in the foreground
    start                     start the agent in the background (PID file in its stateDir)
    stop                      drain every app and stop the agent
    status [--json]           show apps, releases, generations and listeners
    reload [--app NAME]       hot restart of the current release (also: SIGHUP to the agent)
    deploy --app NAME --release DIR [--id ID]
                              hand over to a release directory on this host
    deploy --app NAME --artifact FILE.tar.gz [--manifest FILE]
                              verify, store, unpack and hand over to a packed artifact
    rollback --app NAME [--to RELEASE] [--force]
                              hand over to the previous (or a kept) release: no upload;
                              --force: even one marked failed
                              (also: baton rollback)
    releases --app NAME [--json]
                              list the releases the host keeps (also: baton releases)
    upgrade                   replace the agent process, apps keep serving
    token [--out FILE]        make a channel token (FILE written 0600; else printed)
    install [--unit-dir DIR] [--socket] [--force] [--dry-run]
                              write a systemd unit (Type=notify) that runs this agent with this
                              node and this build: DIR/${SERVICE_NAME} (DIR default
                              ${DEFAULT_UNIT_DIR}); never over an existing file without
                              --force; --socket: systemd holds the listeners (prints the socket
                              units to write); --dry-run: print the unit, write nothing
options: --json, --quiet
${REMOTE_USAGE}`;

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
      artifact: { type: 'string' },
      manifest: { type: 'string' },
      to: { type: 'string' },
      out: { type: 'string' },
      key: { type: 'string' },
      'release-id': { type: 'string' },
      'git-sha': { type: 'string' },
      'unit-dir': { type: 'string' },
      socket: { type: 'boolean', default: false },
      force: { type: 'boolean', default: false },
      'dry-run': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
      ...REMOTE_OPTIONS,
    },
  });
  const flags = { json: values.json, quiet: values.quiet };
  const [group, command] = positionals;
  if (values.help) return out.line(USAGE);
  if (group === 'keygen') return keygenCommand(values.out ?? '.', out);
  if (group === 'pack') {
    if (!command || !values.app)
      throw new BatonError('USAGE', `pack needs a directory or archive and --app NAME\n${USAGE}`);
    await packCommand(
      command,
      {
        app: values.app,
        out: values.out ?? '.',
        key: values.key,
        releaseId: values['release-id'],
        gitSha: values['git-sha'],
      },
      out,
    );
    return;
  }
  if (group === 'deploy') {
    if (!command || !values.app)
      throw new BatonError('USAGE', `deploy needs a directory or archive and --app NAME\n${USAGE}`);
    if (!isRemote(values))
      throw new BatonError(
        'USAGE',
        "deploy needs --host USER@HOST or --agent URL (on the agent's own host: baton agent deploy)",
      );
    return remoteDeploy(
      command,
      {
        app: values.app,
        key: values.key,
        manifest: values.manifest,
        releaseId: values['release-id'],
        gitSha: values['git-sha'],
        remote: values,
        ...flags,
      },
      out,
    );
  }
  if (isRemote(values) && (group === 'rollback' || group === 'releases' || group === 'status')) {
    if (group === 'rollback') {
      if (!values.app) throw new BatonError('USAGE', 'rollback needs --app NAME');
      return remoteRollback(
        { app: values.app, to: values.to, force: values.force, remote: values, ...flags },
        out,
      );
    }
    if (group === 'releases') {
      if (!values.app) throw new BatonError('USAGE', 'releases needs --app NAME');
      const releases = await remoteQuery({ type: 'releases', app: values.app }, values);
      return printReleases(
        values.app,
        parseResult(z.array(ReleaseInfoSchema), releases, 'releases'),
        values.json,
        out,
      );
    }
    return printStatus(
      parseResult(AgentStatusSchema, await remoteQuery({ type: 'status' }, values), 'status'),
      values.json,
      out,
    );
  }
  // Without --host/--agent these speak to this host's agent, as `baton agent …` does.
  if (group === 'releases' || group === 'rollback' || group === 'status')
    positionals.splice(0, 0, 'agent');
  const [, sub] = positionals;
  if (positionals[0] !== 'agent' || !sub)
    throw new BatonError('USAGE', `expected a command\n${USAGE}`);
  const config = values.config ?? process.env.BATON_CONFIG ?? '/etc/baton/agent.yml';
  switch (sub) {
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
      if (values.app && values.artifact)
        return agentDeployArtifact(
          config,
          {
            app: values.app,
            archive: values.artifact,
            manifest:
              values.manifest ?? values.artifact.replace(/\.(tar\.gz|tgz)$/, '.manifest.json'),
            json: values.json,
            quiet: values.quiet,
          },
          out,
        );
      if (!values.app || !values.release)
        throw new BatonError(
          'USAGE',
          'deploy needs --app NAME and --release DIR or --artifact FILE',
        );
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
    case 'rollback':
      if (!values.app) throw new BatonError('USAGE', 'rollback needs --app NAME');
      return agentRollback(
        config,
        {
          app: values.app,
          to: values.to,
          force: values.force,
          json: values.json,
          quiet: values.quiet,
        },
        out,
      );
    case 'releases':
      if (!values.app) throw new BatonError('USAGE', 'releases needs --app NAME');
      return agentReleases(config, values.app, values.json, out);
    case 'upgrade':
      return agentUpgrade(config, out);
    case 'token':
      return tokenCommand(values.out, out);
    case 'install':
      if (positionals.length > 2)
        throw new BatonError(
          'USAGE',
          `agent install takes no arguments besides options (got "${positionals.slice(2).join(' ')}")\n${USAGE}`,
        );
      return agentInstall(
        {
          config,
          unitDir: values['unit-dir'] ?? DEFAULT_UNIT_DIR,
          socket: values.socket,
          force: values.force,
          dryRun: values['dry-run'],
        },
        out,
      );
    default:
      throw new BatonError('USAGE', `unknown command "agent ${sub}"\n${USAGE}`);
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  const code = err instanceof BatonError ? err.code : 'ERROR';
  process.stderr.write(`baton: ${code}: ${errorMessage(err)}\n`);
  if (err instanceof BatonError)
    for (const line of err.lines) process.stderr.write(`  | ${line}\n`);
  process.exitCode = 1;
});
