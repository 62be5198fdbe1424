import type { FleetReport, HostReport } from '../deploy/fleet-types.js';
import { bytesText, secondsText } from './job-log.js';

/** A table cell: no pipe or newline may break the row. */
const cell = (text: string): string => text.replace(/\|/g, '\\|').replace(/\r?\n/g, ' ');

const ms = (n: number | undefined): string => (n === undefined ? '' : secondsText(n));

/** Sums the phases whose key is `name` or `name:…` (a hook's phases carry its name). */
function phase(r: HostReport, ...names: string[]): number | undefined {
  let total: number | undefined;
  for (const [k, v] of Object.entries(r.phases))
    if (names.some((n) => k === n || k.startsWith(`${n}:`))) total = (total ?? 0) + v;
  return total;
}

/** Start to ready; for a version that never got ready, start to the deadline that gave up on it. */
function readiness(r: HostReport): number | undefined {
  const waited = r.failure?.code === 'READINESS_TIMEOUT' ? ['failed'] : [];
  return phase(r, 'generation-started', 'ready', ...waited);
}

const RESULT: Record<HostReport['result'], string> = {
  switched: '✅ switched',
  unchanged: '➖ already on it',
  'not-switched': '⏸️ not switched',
  'rolled-back': '↩️ rolled back',
  failed: '❌ failed',
};

function verb(report: FleetReport): string {
  if (report.kind === 'rollback') return 'rollback';
  return report.kind === 'redeploy' ? 'redeploy' : 'deploy';
}

/** The job summary: the outcome, one row per host, the fleet's totals, what was rolled back. */
export function renderSummary(app: string, report: FleetReport): string {
  const state = report.dryRun
    ? 'dry run: nothing changed'
    : report.ok
      ? 'succeeded'
      : report.cancelled
        ? 'cancelled'
        : 'failed';
  const out = [
    `## baton: ${verb(report)} of ${app}${report.target ? ` to \`${report.target}\`` : ''}: ${state}`,
    '',
  ];
  if (report.reason) out.push(`**${cell(report.reason)}**`, '');
  out.push(
    '| host | before → after | result | sent | upload | verify | unpack | hook | readiness | drain | why |',
    '| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |',
  );
  for (const r of report.hosts) {
    const why = r.failure
      ? `${r.failure.step}${r.failure.phase ? ` after ${r.failure.phase}` : ''}: ${r.failure.code}: ${r.failure.message}`
      : (r.plan ?? (r.rolledBack ? `rolled back: ${r.rolledBack}` : ''));
    out.push(
      `| ${cell(r.host)} | ${cell(r.before ?? '–')} → ${cell(r.after ?? '–')} | ${RESULT[r.result]} | ${bytesText(r.bytesSent)} | ${ms(phase(r, 'received'))} | ${ms(phase(r, 'verified'))} | ${ms(phase(r, 'unpacked'))} | ${ms(phase(r, 'hook-finished'))} | ${ms(readiness(r))} | ${ms(phase(r, 'draining', 'drained'))} | ${cell(why.slice(0, 300))} |`,
    );
  }
  const count = (result: HostReport['result']) =>
    report.hosts.filter((r) => r.result === result).length;
  const sent = report.hosts.reduce((n, r) => n + r.bytesSent, 0);
  out.push(
    '',
    `**Fleet:** ${report.hosts.length} hosts: ${count('switched')} switched, ${count('unchanged')} already on it, ${count('failed')} failed, ${count('rolled-back')} rolled back, ${count('not-switched')} not switched; ${bytesText(sent)} sent; ${secondsText(report.durationMs)}.${report.now ? ` Every host runs \`${report.now}\`.` : ''}`,
  );
  const back = report.hosts.filter((r) => r.rolledBack);
  if (back.length > 0)
    out.push(
      '',
      `**Rolled back:** ${back.map((r) => `${r.host} to \`${r.after ?? r.before ?? '?'}\``).join(', ')}, because ${back[0]!.rolledBack}.`,
    );
  return out.join('\n') + '\n';
}
