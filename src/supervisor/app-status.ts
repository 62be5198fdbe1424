import type { AppConfig } from './config.js';
import type { Release } from './generation-launch.js';
import type { Generation } from './generation.js';
import { describeListener, type Listener } from './listeners.js';
import { MAX_STATUS } from './notify-socket.js';

/** One app as `baton agent status` shows it. */
export interface AppStatus {
  name: string;
  state: 'running' | 'starting' | 'deploying' | 'restarting' | 'stopped' | 'failed';
  release: Release | undefined;
  previous: Release | undefined;
  generation: { number: number; pid: number; releaseId: string; startedAt: string } | undefined;
  listeners: {
    name: string;
    address: string;
    fd: number | undefined;
    origin: string | undefined;
  }[];
  /** Set when the agent does not hold the listeners (re-adopted after a crash without socket activation). */
  warning: string | undefined;
  deploy: string | undefined;
  restarts: number;
  lastError: string | undefined;
  /** The last `STATUS=` the serving generation sent (systemd readiness). */
  notifyStatus: string | undefined;
  /** The user its generations run as, when not the agent's own. */
  user: string | undefined;
}

/** What the status of an app is made from. */
export interface StatusInput {
  app: AppConfig;
  state: AppStatus['state'];
  release: Release | undefined;
  previous: Release | undefined;
  generation: Generation | undefined;
  /** Undefined when another process holds them. */
  listeners: readonly Listener[] | undefined;
  deploy: string | undefined;
  restarts: number;
  lastError: string | undefined;
  mask: (text: string) => string;
  user: string | undefined;
}

export function appStatus(input: StatusInput): AppStatus {
  const { app, generation: gen, listeners } = input;
  return {
    name: app.name,
    state: input.state,
    release: input.release,
    previous: input.previous,
    generation: gen
      ? {
          number: gen.number,
          pid: gen.pid,
          releaseId: gen.releaseId,
          startedAt: gen.record.startedAt,
        }
      : undefined,
    listeners: app.listeners.map((cfg) => {
      const held = listeners?.find((l) => l.name === cfg.name);
      return {
        name: cfg.name,
        address: held?.address ?? describeListener(cfg),
        fd: held?.fd,
        origin: held?.origin,
      };
    }),
    warning: listeners
      ? undefined
      : `the agent does not hold ${app.name}'s listeners: generation ${gen?.number ?? '?'} (pid ${gen?.pid ?? '?'}) ` +
        `kept them when the previous agent died. The next deploy will be a cold switch (old stopped before the new one ` +
        `starts: connections are refused for about the new version's start-up time). Run the agent under systemd socket ` +
        `activation, and use "baton agent upgrade" to replace it, to avoid this.`,
    deploy: input.deploy,
    restarts: input.restarts,
    lastError: input.lastError,
    notifyStatus:
      gen && !gen.hasExited && gen.statusText !== undefined
        ? input.mask(gen.statusText).slice(0, MAX_STATUS)
        : undefined,
    user: input.user,
  };
}
