import type { DeployEvent, DeployOutcome } from '../protocol/channel.js';
import { formatEvent } from '../protocol/events.js';
import type { FleetReporter } from '../deploy/fleet-types.js';
import type { HostFailure } from '../deploy/preflight.js';
import type { ActionIO } from './action-io.js';

/** Lines of a host's detail kept for its group: the rest are counted, not kept. */
const MAX_DETAIL_LINES = 2000;
/** Last lines of a failing hook or generation shown in its annotation. */
const ANNOTATION_LINES = 20;

/** Bytes as people read them: 259 B, 14.2 KiB, 5.0 MiB, 1.04 GiB. */
export function bytesText(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  if (bytes < 1024 ** 3) return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
  return `${(bytes / 1024 ** 3).toFixed(2)} GiB`;
}
export const secondsText = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;

/**
 * The fleet's progress in the job log. Live, each line prefixed with its host: phases, hook
 * output, upload progress in steps of 10 %. When a host ends a step, its whole detail (the
 * generation's output too, and each phase's duration) goes in a collapsible group; a failure
 * becomes an error annotation naming the host, the step, the phase and the last lines.
 */
export function jobLog(io: ActionIO): FleetReporter {
  const detail = new Map<string, { lines: string[]; dropped: number }>();
  const shownPercent = new Map<string, number>();
  const keep = (host: string, line: string) => {
    let d = detail.get(host);
    if (!d) detail.set(host, (d = { lines: [], dropped: 0 }));
    if (d.lines.length < MAX_DETAIL_LINES) d.lines.push(line);
    else d.dropped++;
  };
  return {
    event(host: string, event: DeployEvent) {
      if (event.type === 'progress') {
        const pct = event.total > 0 ? Math.floor((event.bytes / event.total) * 10) * 10 : 100;
        if (pct > (shownPercent.get(host) ?? -1)) {
          shownPercent.set(host, pct);
          io.info(
            `[${host}] upload ${pct}% (${bytesText(event.bytes)} of ${bytesText(event.total)})`,
          );
        }
        return;
      }
      const line = formatEvent(event);
      keep(host, `${event.at} ${line}`);
      // A generation's own output stays in the group; a hook's is part of the deploy's story.
      if (event.type === 'log' && !event.source.startsWith('hook')) return;
      io.info(`[${host}] ${line.trimStart()}`);
    },
    sent() {
      // The agent's own progress events say what arrived; what left this machine adds nothing.
    },
    note(host: string, line: string) {
      keep(host, line);
      io.info(`[${host}] ${line}`);
    },
    fleet(line: string) {
      // A new pass of the fleet: what hosts said in the last one was shown already.
      detail.clear();
      io.info(`── ${line}`);
    },
    stepDone(host, step, { outcome, failure }) {
      shownPercent.delete(host);
      const d = detail.get(host) ?? { lines: [], dropped: 0 };
      detail.delete(host);
      const lines = [...d.lines];
      if (d.dropped > 0) lines.push(`(${d.dropped} more lines not shown)`);
      if (outcome) lines.push(...phaseLines(outcome));
      if (failure) lines.push(`${failure.code}: ${failure.message}`, ...failure.lines);
      const took = outcome ? ` in ${secondsText(outcome.totalMs)}` : '';
      const what = failure
        ? 'FAILED'
        : `done${outcome?.releaseId ? ` (${outcome.releaseId})` : ''}`;
      io.group(`${host}: ${step} ${what}${took}`, lines);
      if (failure) annotate(io, host, failure);
    },
  };
}

function phaseLines(outcome: DeployOutcome): string[] {
  const entries = Object.entries(outcome.phases);
  if (entries.length === 0) return [];
  return [
    `phases: ${entries.map(([k, ms]) => `${k} ${ms} ms`).join(', ')}`,
    `bytes sent: ${outcome.uploadedBytes}; deploy id ${outcome.deployId}`,
  ];
}

function annotate(io: ActionIO, host: string, f: HostFailure): void {
  const at = f.phase ? ` after ${f.phase}` : '';
  const last = f.lines.slice(-ANNOTATION_LINES);
  io.error(
    `${host}: ${f.step} failed${at}: ${f.code}: ${f.message}${last.length ? `\nlast lines:\n${last.join('\n')}` : ''}`,
    `baton: ${host} failed (${f.step}${at})`,
  );
}
