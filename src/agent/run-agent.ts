import { mkdir, writeFile } from 'node:fs/promises';
import { BatonError, errorMessage } from '../errors.js';
import type { SupervisorEvent } from '../protocol/events.js';
import { notifyReady } from '../protocol/systemd.js';
import { Agent } from '../supervisor/agent.js';
import { agentPaths } from '../supervisor/agent-paths.js';
import { loadAgentConfig } from '../supervisor/config.js';
import { preflight } from '../supervisor/preflight.js';
import { lookupGroup } from '../supervisor/privilege.js';
import { SystemdNotifier } from '../supervisor/sd-notify.js';
import { ControlServer } from '../supervisor/control-server.js';
import { claimPidFile, releasePidFile } from '../supervisor/pid-file.js';
import { ChannelServer } from '../transport/server.js';
import { channelAgent } from './channel-agent.js';

/** The agent's own log: one JSON object per line on stdout (a file when daemonized). */
export function jsonLine(record: SupervisorEvent | Record<string, unknown>): void {
  process.stdout.write(
    JSON.stringify('at' in record ? record : { at: new Date().toISOString(), ...record }) + '\n',
  );
}

/**
 * `baton agent run`: loads the config, claims the PID file, starts (or adopts) every app, serves
 * the control socket, and maps signals: SIGTERM/SIGINT drain the apps and exit, SIGHUP reloads
 * them, SIGUSR2 upgrades the agent in place. Resolves when the agent has finished.
 */
export async function runAgent(
  configFile: string,
  successorArgv: string[],
  env: NodeJS.ProcessEnv = process.env,
): Promise<void> {
  const config = await loadAgentConfig(configFile);
  // Users, env files, the notify package: a config this host cannot run fails here, nothing touched.
  const runtimes = await preflight(config);
  const paths = agentPaths(config.stateDir);
  await mkdir(config.stateDir, { recursive: true, mode: 0o711 });
  const predecessor = Number(env.BATON_PREDECESSOR_PID) || undefined;
  await claimPidFile(paths.pidFile, predecessor);
  const agent = new Agent(config, configFile, jsonLine, env, runtimes);
  // Under systemd (Type=notify): READY=1, STATUS=, WATCHDOG=1, MAINPID= in an upgrade.
  const systemd = SystemdNotifier.fromEnv(env, (msg) =>
    jsonLine({ type: 'agent', level: 'warn', msg }),
  );
  const channel = config.channel
    ? new ChannelServer(config.channel, channelAgent(agent), config.stateDir, jsonLine, lookupGroup)
    : undefined;
  // A stop asked for while the apps start is kept for when they have: dying halfway would
  // leave a generation that no state file records.
  let stopAsked: NodeJS.Signals | undefined;
  const askStop = (signal: NodeJS.Signals) => (stopAsked ??= signal);
  process.on('SIGTERM', askStop);
  process.on('SIGINT', askStop);
  try {
    if (channel) {
      agent.channelPort = () => channel.port;
      agent.channelSocket = () => channel.address()?.socket;
      // The token and TLS files are read and checked before any app is touched: a bad one fails
      // here, with nothing started.
      await channel.prepare();
      if (predecessor !== undefined) {
        // A new agent taking over in an upgrade binds the channel before it adopts the apps:
        // until it says READY they are still the old agent's, and a failure after adopting them
        // could only stop them (the old agent would then cold-restart them). A deploy asked
        // for meanwhile is told to come back in a moment.
        channel.registry.closed = 'the agent is being upgraded; try again in a moment';
        await channel.listen();
      }
    }
    try {
      await agent.start();
      // A plain start binds once the apps are up: a client that connects earlier is refused
      // and retries. A taken port then stops the apps this agent has just started itself.
      if (predecessor === undefined) await channel?.listen();
    } catch (err) {
      await agent.stop().catch(() => undefined);
      throw err;
    }
  } catch (err) {
    await channel?.close();
    await releasePidFile(paths.pidFile);
    throw err;
  } finally {
    process.off('SIGTERM', askStop);
    process.off('SIGINT', askStop);
  }
  if (channel) channel.registry.closed = undefined;

  let finish: (how: 'stopped' | 'handed-off') => void = () => undefined;
  const finished = new Promise<'stopped' | 'handed-off'>((resolve) => (finish = resolve));
  let upgrading = false;
  const control = new ControlServer(agent, {
    upgrade: async () => {
      if (upgrading) throw new Error('an upgrade is already in progress');
      if (channel && channel.registry.activeCount > 0)
        throw new BatonError(
          'DEPLOY_BUSY',
          'busy: a remote deploy is in progress; upgrade the agent when it ends',
        );
      upgrading = true;
      // From here no new remote deploy starts on this agent, even over a connection already
      // open: the apps are about to be handed over.
      if (channel) channel.registry.closed = 'the agent is being upgraded; try again in a moment';
      try {
        await control.stopListening();
        // The successor binds the channel's socket and port itself: a client that connects
        // meanwhile retries. Closed before the successor starts: closing a unix listener
        // unlinks its path, which must never take away the successor's socket.
        await channel?.stopListening();
        const successor = await agent.spawnSuccessor(successorArgv);
        jsonLine({ type: 'agent', msg: `handed over to new agent pid ${successor.pid}` });
        // The new agent is the service's main process from now on: its pings and status count.
        await systemd?.send(`MAINPID=${successor.pid}`);
        systemd?.stop();
        setImmediate(() => void successor.done().then(() => finish('handed-off')));
        return { pid: successor.pid };
      } catch (err) {
        upgrading = false;
        if (channel) channel.registry.closed = undefined;
        // This agent carries on: the PID file, which the successor claimed, names it again.
        await writeFile(paths.pidFile, `${process.pid}\n`, { mode: 0o644 }).catch((e: unknown) =>
          jsonLine({ type: 'agent', level: 'error', msg: errorMessage(e) }),
        );
        await control.listen(paths.socket);
        // Not fatal to the upgrade's answer: the error that ended the upgrade is the one to see.
        await channel?.resumeListening().catch((e: unknown) =>
          jsonLine({
            type: 'channel',
            level: 'error',
            msg: `the channel cannot listen again: ${errorMessage(e)}`,
          }),
        );
        throw err;
      }
    },
  });
  await control.listen(paths.socket);

  let stopping = false;
  const onStop = (signal: NodeJS.Signals) => {
    if (stopping || upgrading) return;
    stopping = true;
    void systemd?.send('STOPPING=1');
    // A deploy asked for now would upload in full and then find its app stopped.
    if (channel) channel.registry.closed = 'the agent is stopping';
    jsonLine({ type: 'agent', msg: `${signal}: draining apps and stopping` });
    agent
      .stop()
      .catch((err: unknown) => jsonLine({ type: 'agent', level: 'error', msg: errorMessage(err) }))
      .finally(() => finish('stopped'));
  };
  const onReload = () => {
    jsonLine({ type: 'agent', msg: 'SIGHUP: reloading apps' });
    agent
      .reload()
      .catch((err: unknown) => jsonLine({ type: 'agent', level: 'error', msg: errorMessage(err) }));
  };
  const onUpgrade = () => {
    jsonLine({ type: 'agent', msg: 'SIGUSR2: upgrading agent' });
    // The same path as the control request, so there is one way to upgrade.
    void control.dispatchLocal({ id: 'signal', method: 'upgrade' });
  };
  process.on('SIGTERM', onStop);
  process.on('SIGINT', onStop);
  process.on('SIGHUP', onReload);
  process.on('SIGUSR2', onUpgrade);
  if (stopAsked) onStop(stopAsked);
  jsonLine({
    type: 'agent',
    msg: 'ready',
    pid: process.pid,
    apps: agent.status().apps.map((a) => a.name),
  });
  notifyReady(env);
  // Each app's release, as `systemctl status` shows it; again whenever one changes.
  const summary = () =>
    'STATUS=' +
    agent
      .status()
      .apps.map((a) => `${a.name}: ${a.release?.id ?? 'no release'} (${a.state})`)
      .join(', ');
  await systemd?.send(`READY=1\n${summary()}`);
  const unsubscribe = agent.subscribe((e) => {
    if (
      e.type === 'phase' &&
      ['switched', 'done', 'crashed', 'failed', 'stopped'].includes(e.phase)
    )
      // After the deploy or restart has settled, so the state shown is the one it ended in.
      setImmediate(() => void systemd?.send(summary()));
  });

  const how = await finished;
  unsubscribe();
  systemd?.stop();
  process.off('SIGTERM', onStop);
  process.off('SIGINT', onStop);
  process.off('SIGHUP', onReload);
  process.off('SIGUSR2', onUpgrade);
  await control.close();
  await channel?.close();
  if (how === 'stopped') await releasePidFile(paths.pidFile);
  jsonLine({
    type: 'agent',
    msg: how === 'stopped' ? 'stopped' : 'exited after upgrade; apps kept running',
  });
}
