import * as core from '@actions/core';
import type { InputSource } from './inputs.js';

/**
 * What the action does to the runner: log lines, groups, annotations, outputs, the job
 * summary. The runner's own implementation is `coreIO` (workflow commands on stdout and the
 * files GitHub names in GITHUB_OUTPUT and GITHUB_STEP_SUMMARY).
 */
export interface ActionIO {
  inputs: InputSource;
  info(line: string): void;
  warning(line: string): void;
  /** An error annotation: `title` is what the run's page lists. */
  error(message: string, title: string): void;
  group(name: string, lines: readonly string[]): void;
  setOutput(name: string, value: string): void;
  /** Appends markdown to the job summary. */
  summary(markdown: string): Promise<void>;
  setFailed(message: string): void;
}

/** The runner's IO, through @actions/core: the only module that imports it. */
export function coreIO(): ActionIO {
  return {
    inputs: {
      get: (name) => core.getInput(name),
      bool: (name) => core.getBooleanInput(name),
      secret: (value) => core.setSecret(value),
    },
    info: (line) => core.info(line),
    warning: (line) => core.warning(line),
    error: (message, title) => core.error(message, { title }),
    group(name, lines) {
      core.startGroup(name);
      for (const line of lines) core.info(line);
      core.endGroup();
    },
    setOutput: (name, value) => core.setOutput(name, value),
    async summary(markdown) {
      if (!process.env.GITHUB_STEP_SUMMARY) return;
      await core.summary.addRaw(markdown, true).write();
    },
    setFailed: (message) => core.setFailed(message),
  };
}
