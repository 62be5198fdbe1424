import path from 'node:path';

/** Where the agent keeps what it owns, under its state dir. */
export interface AgentPaths {
  pidFile: string;
  stateFile: string;
  socket: string;
  logDir: string;
  agentLog: string;
}

export function agentPaths(stateDir: string): AgentPaths {
  return {
    pidFile: path.join(stateDir, 'agent.pid'),
    stateFile: path.join(stateDir, 'state.json'),
    socket: path.join(stateDir, 'agent.sock'),
    logDir: path.join(stateDir, 'logs'),
    agentLog: path.join(stateDir, 'agent.log'),
  };
}
