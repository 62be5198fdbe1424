import type { z } from 'zod';
/**
 * baton's error type: a stable `code` for programs and tests, a message for people that says
 * what was wrong and what to do.
 */
export type ErrorCode =
  | 'CONFIG_INVALID'
  | 'CONFIG_UNREADABLE'
  | 'LISTENER_IN_USE'
  | 'LISTENER_BIND_FAILED'
  | 'LISTENER_ACTIVATION_MISMATCH'
  | 'LISTEN_UNSUPPORTED'
  | 'COMMAND_NOT_FOUND'
  | 'RELEASE_DIR_MISSING'
  | 'GENERATION_EXITED'
  | 'READINESS_TIMEOUT'
  | 'HOOK_FAILED'
  | 'HOOK_TIMEOUT'
  | 'DEPLOY_BUSY'
  | 'APP_UNKNOWN'
  | 'NO_RELEASE'
  | 'AGENT_RUNNING'
  | 'AGENT_NOT_RUNNING'
  | 'CONTROL_FAILED'
  | 'STATE_INVALID'
  | 'USAGE'
  // who an app runs as, its environment file and shared paths
  | 'USER_UNKNOWN'
  | 'GROUP_UNKNOWN'
  | 'RUN_AS_ROOT_REFUSED'
  | 'USER_SWITCH_DENIED'
  | 'SETPRIV_MISSING'
  | 'ENV_FILE_UNREADABLE'
  | 'ENV_FILE_INVALID'
  | 'SHARED_PATH_INVALID'
  // systemd's notify protocol
  | 'NOTIFY_UNAVAILABLE'
  | 'WATCHDOG_MISSED'
  // artifacts and the release store
  | 'ARCHIVE_PATH_ESCAPE'
  | 'ARCHIVE_ABSOLUTE_PATH'
  | 'ARCHIVE_LINK_ESCAPE'
  | 'ARCHIVE_HARDLINK'
  | 'ARCHIVE_SPECIAL_FILE'
  | 'ARCHIVE_SETUID'
  | 'ARCHIVE_TOO_MANY_FILES'
  | 'ARCHIVE_TOO_LARGE'
  | 'ARCHIVE_RATIO'
  | 'ARCHIVE_CORRUPT'
  | 'DIGEST_MISMATCH'
  | 'SIGNATURE_MISSING'
  | 'SIGNATURE_INVALID'
  | 'KEY_UNKNOWN'
  /** A stored release signed with a key the agent trusted once but no longer does. */
  | 'KEY_REVOKED'
  | 'KEY_INVALID'
  | 'MANIFEST_INVALID'
  | 'APP_CONFIG_INVALID'
  | 'RELEASE_UNKNOWN'
  | 'RELEASE_EXISTS'
  /** A release marked failed, switched to without `force`. */
  | 'RELEASE_FAILED'
  /** A switch to the release that serves already: nothing to do (a fleet skips such a host). */
  | 'ALREADY_CURRENT'
  /** A release id the store cannot keep apart from its own files (e.g. one ending in .json). */
  | 'RELEASE_ID_INVALID'
  // the channel between client and agent
  | 'PROTOCOL_MISMATCH'
  | 'PROTOCOL_VIOLATION'
  | 'AUTH_FAILED'
  | 'AUTH_RATE_LIMITED'
  | 'AUTH_TIMEOUT'
  | 'AGENT_UNVERIFIED'
  | 'TOKEN_INVALID'
  | 'UPLOAD_INCOMPLETE'
  | 'DEPLOY_UNKNOWN'
  | 'DEPLOY_ABORTED'
  | 'CONNECTION_LOST'
  | 'CHANNEL_CONFIG_INVALID'
  | 'CHANNEL_SOCKET_IN_USE'
  | 'CHANNEL_SOCKET_UNSAFE'
  | 'CHANNEL_SOCKET_UNREACHABLE'
  | 'CHANNEL_SOCKET_DENIED'
  // SSH
  | 'SSH_HOST_KEY_UNKNOWN'
  | 'SSH_HOST_KEY_MISMATCH'
  | 'SSH_AUTH_FAILED'
  | 'SSH_CONNECT_FAILED'
  | 'SSH_FORWARD_FAILED'
  | 'SSH_KEY_INVALID';

export class BatonError extends Error {
  readonly code: ErrorCode;
  /** Last lines a failed process printed, when there is one. */
  readonly lines: readonly string[];

  constructor(code: ErrorCode, message: string, lines: readonly string[] = []) {
    super(message);
    this.name = 'BatonError';
    this.code = code;
    this.lines = lines;
  }
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export function errorCode(err: unknown): string | undefined {
  if (err instanceof BatonError) return err.code;
  if (err instanceof Error && 'code' in err && typeof err.code === 'string') return err.code;
  return undefined;
}

/** One line per problem, each naming the field: `apps.0.listeners.1.tcp: …`. */
export function formatIssues(error: z.ZodError): string {
  return error.issues
    .map((issue) => {
      const where = issue.path.length ? issue.path.join('.') : '(top level)';
      if (issue.code === 'unrecognized_keys')
        return `${where}: unknown field${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `"${k}"`).join(', ')}`;
      return `${where}: ${issue.message}`;
    })
    .join('; ');
}
