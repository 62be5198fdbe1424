import { access, constants, rename, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BatonError, errorMessage } from '../errors.js';
import { loadAgentConfig } from '../supervisor/config.js';
import { type AgentConfig } from '../protocol/agent-config.js';
import type { Output } from './agent-commands.js';

/** `baton agent install`: a systemd unit that runs this agent, from this Node and this build. */
export interface InstallOptions {
  /** The agent's config file; it must load, since the unit's timeouts come from it. */
  config: string;
  /** Where unit files go. */
  unitDir: string;
  /** Have systemd hold the listeners: the service asks for one socket unit per listener. */
  socket: boolean;
  /** Replace an existing unit file. */
  force: boolean;
  /** Print the unit instead of writing it. */
  dryRun: boolean;
}

export const DEFAULT_UNIT_DIR = '/etc/systemd/system';
export const SERVICE_NAME = 'baton-agent.service';

/** The compiled CLI next to this file: ExecStart runs it with the same node that runs us now. */
const CLI_MAIN = fileURLToPath(new URL('./main.js', import.meta.url));
/** systemd's own PATH for services; node's directory is put in front when it is elsewhere. */
const SYSTEMD_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/** Margin on the timeouts derived from the config (state, listeners, process start). */
const MARGIN_SEC = 30;

/**
 * One ExecStart= argument. systemd splits on spaces, expands `%` specifiers and `$` variables,
 * and reads C escapes inside quotes, so each of those is escaped; control characters cannot be.
 */
export function execArg(arg: string): string {
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(arg))
    throw new BatonError(
      'USAGE',
      `cannot put ${JSON.stringify(arg)} in a systemd unit: it holds a control character`,
    );
  const plain = arg.replace(/%/g, '%%').replace(/\$/g, () => '$$');
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(plain)) return plain;
  return `"${plain.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

/** One Environment= assignment: `%` specifiers escaped, quoted whole when it holds blanks or quotes. */
function envAssignment(name: string, value: string): string {
  const text = `${name}=${value}`.replace(/%/g, '%%');
  if (/^[^\s"'\\]+$/.test(text)) return text;
  return `"${text.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

/** `web/http` → `baton-agent-web-http.socket`: one socket unit per listener, since systemd names all of a unit's fds alike. */
export function socketUnitName(app: string, listener: string): string {
  return `baton-agent-${app}-${listener}.socket`;
}

export interface SocketUnit {
  name: string;
  text: string;
}

/** The socket units a socket-activated agent needs, one per listener, named as the agent expects (`app/listener`). */
export function socketUnits(config: AgentConfig): SocketUnit[] {
  const units: SocketUnit[] = [];
  for (const app of config.apps)
    for (const l of app.listeners) {
      let listen: string;
      if (l.tcp !== undefined) {
        if (l.tcp.port === 0)
          throw new BatonError(
            'USAGE',
            `listener ${app.name}/${l.name} asks for port 0 (any free port); systemd cannot hold such a socket for the agent: give it a fixed port, or leave out --socket`,
          );
        listen =
          l.tcp.family === 6 ? `[${l.tcp.host}]:${l.tcp.port}` : `${l.tcp.host}:${l.tcp.port}`;
      } else listen = l.unix!;
      const name = socketUnitName(app.name, l.name);
      units.push({
        name,
        text: [
          `# ${name}: systemd holds ${app.name}'s listener "${l.name}"; the agent, and every agent after`,
          '# it, receives it, so a restarted agent hands over without re-binding.',
          '[Unit]',
          `Description=baton: listener ${app.name}/${l.name}`,
          '',
          '[Socket]',
          `ListenStream=${listen}`,
          // The agent finds its listeners by these names (LISTEN_FDNAMES).
          `FileDescriptorName=${app.name}/${l.name}`,
          '# Connections wait here while no generation accepts.',
          `Backlog=${l.backlog}`,
          `Service=${SERVICE_NAME}`,
          '',
          '[Install]',
          'WantedBy=sockets.target',
          '',
        ].join('\n'),
      });
    }
  return units;
}

export interface ServiceUnitInput {
  node: string;
  cli: string;
  configFile: string;
  config: AgentConfig;
  sockets: string[];
}

function seconds(ms: number): number {
  return Math.ceil(ms / 1000);
}

/** The agent's service unit. Pure: everything it depends on is passed in. */
export function serviceUnit(input: ServiceUnitInput): string {
  const { config, sockets } = input;
  // Apps start one after another (start hook, then readiness) before the agent says READY=1.
  const startSec =
    MARGIN_SEC +
    config.apps.reduce((sum, app) => {
      const ready = app.readiness.type === 'delay' ? app.readiness.ms : app.readiness.timeoutMs;
      return sum + seconds(ready + (app.hooks.start?.timeoutMs ?? 0));
    }, 0);
  // Apps drain side by side on stop, each then running its stop hook.
  const stopSec =
    MARGIN_SEC +
    Math.max(
      ...config.apps.map((app) => seconds(app.drain.timeoutMs + (app.hooks.stop?.timeoutMs ?? 0))),
    );
  const nodeDir = path.dirname(input.node);
  const needPath = !SYSTEMD_PATH.split(':').includes(nodeDir);
  const exec = [input.node, input.cli, 'agent', 'run', '--config', input.configFile]
    .map(execArg)
    .join(' ');
  const lines = [
    `# ${SERVICE_NAME}, written by \`baton agent install\`. Run it again (with --force) after`,
    '# moving baton or upgrading Node: ExecStart names both by absolute path.',
    '[Unit]',
    'Description=baton agent: zero-downtime deploys',
    'After=network.target',
  ];
  if (sockets.length > 0) lines.push(`Requires=${sockets.join(' ')}`, `After=${sockets.join(' ')}`);
  lines.push(
    '',
    '[Service]',
    '# The agent says READY=1 once its listeners are bound and its apps adopted or started,',
    "# STATUS= with each app's release, and WATCHDOG=1 while it is alive.",
    'Type=notify',
    '# Only the main process is heard. `baton agent upgrade` (or SIGUSR2) replaces that process:',
    '# the old agent sends MAINPID=<new pid> before it exits, so systemd follows the new one.',
    'NotifyAccess=main',
    'WatchdogSec=30s',
    `ExecStart=${exec}`,
    '# A hot restart of every app (like `baton agent reload`).',
    'ExecReload=/bin/kill -HUP $MAINPID',
  );
  if (needPath)
    lines.push(
      "# Apps whose command is a bare name (node, python3) find it where this agent's node lives.",
      `Environment=${envAssignment('PATH', `${nodeDir}:${SYSTEMD_PATH}`)}`,
    );
  if (sockets.length > 0) lines.push(`Sockets=${sockets.join(' ')}`);
  lines.push(
    '# Apps are started detached in this cgroup: a crashed or restarted agent must not take',
    '# them with it. The next agent adopts them. (`systemctl stop` still drains every app:',
    '# the agent does that on SIGTERM.)',
    'KillMode=process',
    'Restart=on-failure',
    'RestartSec=1s',
    '# Every app must start (start hook, readiness) before the agent is ready.',
    `TimeoutStartSec=${startSec}`,
    '# On stop the agent drains every app: the longest drain and stop hook, and more.',
    `TimeoutStopSec=${stopSec}`,
    '',
    '[Install]',
    'WantedBy=multi-user.target',
    '',
  );
  return lines.join('\n');
}

async function checkUnitDir(dir: string): Promise<void> {
  let info;
  try {
    info = await stat(dir);
  } catch (err) {
    throw new BatonError(
      'USAGE',
      `cannot use unit directory ${dir}: ${errorMessage(err)}; on a host without systemd, pass --unit-dir DIR or --dry-run`,
    );
  }
  if (!info.isDirectory()) throw new BatonError('USAGE', `${dir} is not a directory`);
  try {
    await access(dir, constants.W_OK);
  } catch {
    throw new BatonError(
      'USAGE',
      `cannot write to ${dir}: run baton agent install as root, or pass --unit-dir DIR or --dry-run`,
    );
  }
}

/** Writes `file` whole: never a half-written unit, and never over an existing one unless `force`. */
async function writeUnit(file: string, text: string, force: boolean): Promise<void> {
  if (!force) {
    try {
      await writeFile(file, text, { flag: 'wx', mode: 0o644 });
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST')
        throw new BatonError(
          'USAGE',
          `${file} exists and was left as it is: pass --force to replace it, or --dry-run to see the unit`,
        );
      throw new BatonError('USAGE', `cannot write ${file}: ${errorMessage(err)}`);
    }
  }
  const tmp = `${file}.baton-${process.pid}.tmp`;
  try {
    await writeFile(tmp, text, { mode: 0o644 });
    await rename(tmp, file);
  } catch (err) {
    throw new BatonError('USAGE', `cannot write ${file}: ${errorMessage(err)}`);
  }
}

export async function agentInstall(opts: InstallOptions, out: Output): Promise<void> {
  const configFile = path.resolve(opts.config);
  const config = await loadAgentConfig(configFile);
  const sockets = opts.socket ? socketUnits(config) : [];
  const unitDir = path.resolve(opts.unitDir);
  const file = path.join(unitDir, SERVICE_NAME);
  const text = serviceUnit({
    node: process.execPath,
    cli: CLI_MAIN,
    configFile,
    config,
    sockets: sockets.map((s) => s.name),
  });
  if (opts.dryRun) {
    out.line(text);
    for (const s of sockets) out.line(`# ${path.join(unitDir, s.name)} (not written)\n${s.text}`);
    return;
  }
  await checkUnitDir(unitDir);
  await writeUnit(file, text, opts.force);
  out.line(`wrote ${file} (node ${process.execPath} ${process.version}, config ${configFile})`);
  if (sockets.length > 0) {
    out.line('');
    out.line(
      `the service asks for ${sockets.length === 1 ? 'this socket unit' : 'these socket units'}; install does not write ${sockets.length === 1 ? 'it' : 'them'}. Write each to ${unitDir}/:`,
    );
    for (const s of sockets) out.line(`\n# ${path.join(unitDir, s.name)}\n${s.text}`);
  }
  const enable = ['systemctl enable --now', ...sockets.map((s) => s.name), SERVICE_NAME].join(' ');
  out.line('');
  out.line('next:');
  out.line('  systemctl daemon-reload');
  out.line(`  ${enable}`);
  out.line("  systemctl status baton-agent     (its status line names each app's release)");
  out.line('then:');
  out.line('  baton agent upgrade              replace the agent; apps keep serving');
  out.line('  systemctl reload baton-agent     hot restart of every app');
  out.line(
    '  (systemctl restart drains and stops every app, then starts them cold: prefer upgrade)',
  );
  if (sockets.length === 0)
    out.line(
      'note: the agent binds the listeners itself. If it dies, its apps keep serving, but the\n' +
        '  restarted agent cannot bind their addresses again and the next deploy is a cold switch.\n' +
        '  To have systemd hold them instead: baton agent install --socket --force',
    );
}
