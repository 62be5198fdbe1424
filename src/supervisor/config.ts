import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { BatonError, errorMessage, formatIssues } from '../errors.js';
import { AgentConfigSchema, type AgentConfig } from '../protocol/agent-config.js';

export function parseAgentConfig(raw: unknown, source: string): AgentConfig {
  const parsed = AgentConfigSchema.safeParse(raw);
  if (!parsed.success)
    throw new BatonError('CONFIG_INVALID', `${source}: ${formatIssues(parsed.error)}`);
  const cfg = parsed.data;
  // Paths in the config are relative to the config file, as a user reading it would expect.
  const base = path.dirname(path.resolve(source));
  cfg.stateDir = path.resolve(base, cfg.stateDir);
  for (const app of cfg.apps) {
    if (app.release !== undefined) app.release = path.resolve(base, app.release);
    if (app.envFile !== undefined) app.envFile = path.resolve(base, app.envFile);
    for (const l of app.listeners) if (l.unix !== undefined) l.unix = path.resolve(base, l.unix);
  }
  if (cfg.channel) cfg.channel.socket = path.resolve(base, cfg.channel.socket);
  return cfg;
}

export async function loadAgentConfig(file: string): Promise<AgentConfig> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new BatonError(
      'CONFIG_UNREADABLE',
      `cannot read config ${file}: ${errorMessage(err)}; pass --config with the path of the agent's YAML or JSON config`,
    );
  }
  let raw: unknown;
  try {
    raw = file.endsWith('.json') ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    throw new BatonError(
      'CONFIG_INVALID',
      `${file}: not valid ${file.endsWith('.json') ? 'JSON' : 'YAML'}: ${errorMessage(err)}`,
    );
  }
  return parseAgentConfig(raw, file);
}
