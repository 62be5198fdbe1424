import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { ChannelAgent } from '../../support/channel-agent.js';

export interface AuditLine {
  event: string;
  peer?: string;
  deployId?: string;
  kind?: string;
  ok?: boolean;
  code?: string;
  uploadedBytes?: number;
}

/** The agent's audit log, parsed (empty before its first line). */
export async function readAudit(ch: ChannelAgent): Promise<AuditLine[]> {
  const text = await readFile(path.join(ch.stateDir, 'audit.log'), 'utf8').catch(() => '');
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as AuditLine);
}
