import type { AppConfig } from '../protocol/app-schema.js';
import type { Generation } from './generation.js';
import { describeListener, type Listener } from './listeners.js';
import { MAX_STATUS } from './notify-socket.js';
import type { AppStatus, Release } from '../protocol/results.js';

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
