import { execFile } from 'node:child_process';
import { errorMessage } from '../errors.js';
import { sendDatagram } from './notify-socket.js';

/**
 * The agent's own side of systemd's notify protocol, when it runs as a `Type=notify` service:
 * `READY=1` once its listeners are bound and its apps adopted, `STATUS=` with each app's
 * release, `WATCHDOG=1` pings when the unit has `WatchdogSec=`, `MAINPID=` naming the new agent
 * in an upgrade, `STOPPING=1` on the way out. Nothing at all when `NOTIFY_SOCKET` is not set.
 *
 * A path address is sent to directly (with node-unix-socket). An abstract address (`@…`), which
 * that package cannot reach, and a host without the package, go through `systemd-notify
 * --pid=<agent pid> --no-block`: as root it sends with the agent's pid as the sender, so
 * `NotifyAccess=main` still holds.
 */
export class SystemdNotifier {
  private watchdog: NodeJS.Timeout | undefined;
  private warned = false;

  private constructor(
    private readonly address: string,
    private readonly log: (msg: string) => void,
  ) {}

  static fromEnv(env: NodeJS.ProcessEnv, log: (msg: string) => void): SystemdNotifier | undefined {
    const address = env.NOTIFY_SOCKET;
    if (!address || (!address.startsWith('/') && !address.startsWith('@'))) return undefined;
    const notifier = new SystemdNotifier(address, log);
    // Like sd_watchdog_enabled(): only for the process systemd means (WATCHDOG_PID), at half the
    // period. A new agent from an upgrade inherits its predecessor's WATCHDOG_PID and is the one
    // meant once the predecessor has named it with MAINPID=.
    const usec = Number(env.WATCHDOG_USEC);
    const pid = env.WATCHDOG_PID === undefined ? process.pid : Number(env.WATCHDOG_PID);
    const meant = pid === process.pid || pid === Number(env.BATON_PREDECESSOR_PID);
    if (Number.isSafeInteger(usec) && usec > 0 && meant) {
      // The watchdog is this process's now: a successor inherits that (see BATON_PREDECESSOR_PID).
      // Left naming the first agent, it would reach no agent after the second upgrade.
      env.WATCHDOG_PID = String(process.pid);
      notifier.watchdog = setInterval(
        () => void notifier.send('WATCHDOG=1'),
        Math.max(1, Math.floor(usec / 2000)),
      );
      notifier.watchdog.unref();
    }
    return notifier;
  }

  /** Sends newline-separated assignments; a failure is logged once, never thrown. */
  async send(state: string): Promise<void> {
    try {
      if (this.address.startsWith('/') && (await sendDatagram(this.address, state))) return;
      await this.viaSystemdNotify(state);
    } catch (err) {
      if (this.warned) return;
      this.warned = true;
      this.log(`cannot notify systemd at ${this.address}: ${errorMessage(err)}`);
    }
  }

  private viaSystemdNotify(state: string): Promise<void> {
    return new Promise((resolve, reject) => {
      execFile(
        'systemd-notify',
        [`--pid=${process.pid}`, '--no-block', ...state.split('\n').filter(Boolean)],
        { env: { ...process.env, NOTIFY_SOCKET: this.address }, timeout: 5000 },
        (err, _stdout, stderr) =>
          err ? reject(new Error(`systemd-notify: ${stderr.trim() || err.message}`)) : resolve(),
      );
    });
  }

  stop(): void {
    clearInterval(this.watchdog);
  }
}
