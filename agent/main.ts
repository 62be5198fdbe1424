#!/usr/bin/env node
// The agent's entry: `node build/agent/main.js --config FILE` is `baton agent run --config FILE`.
process.argv.splice(2, 0, 'agent', 'run');
await import('../src/cli/main.js');
