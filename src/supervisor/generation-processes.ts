import { readdir, readFile, stat } from 'node:fs/promises';
import type { GenerationRecord } from './state.js';
import { processInfo, scanPause, signalGroup } from './process-util.js';

/**
 * The processes of every generation of this agent that has not exited, every app's: a process in
 * one's groups is that one's, never another's stray (a stray keeps its session, and a group
 * cannot be joined across sessions), so a stray search need not read its environment.
 */
const running = new Set<GenerationProcesses>();

let ownGroup: number | undefined;
/** The agent's own process group, which no signal to an app may reach. */
function agentGroup(): number | undefined {
  ownGroup ??= processInfo(process.pid)?.pgid;
  return ownGroup;
}

/**
 * What a generation is made of, as processes: the group it was started in, its main process's
 * current group, and for `readiness: systemd` the strays that left both but carry its
 * environment. Signals reach all of it and nothing else: never the agent's own group, never a
 * group seen empty (Linux gives its number out again).
 */
export class GenerationProcesses {
  /** Process groups to signal: the one it was started in, and its main process's. */
  readonly groups = new Set<number>();
  /** The uid the generation's processes run as: only such processes can be its strays. */
  uid = process.getuid?.() ?? 0;

  constructor(
    private readonly appName: string,
    /** Shared with the generation: `MAINPID=` changes its pid. */
    private readonly record: GenerationRecord,
  ) {
    this.groups.add(record.pid);
    running.add(this);
  }

  /** The generation exited: its groups no longer tell another generation's strays apart. */
  forget(): void {
    running.delete(this);
  }

  /**
   * Adds the main process's current process group to those signalled. A forked main process
   * may call setsid() after it was named, so this is looked up again before each signal.
   */
  trackMainGroup(): void {
    const info = processInfo(this.record.pid);
    if (!info || info.startTicks !== this.record.startTime) return;
    // Never the agent's own group, whatever the app did.
    if (info.pgid > 1 && info.pgid !== agentGroup()) this.groups.add(info.pgid);
  }

  /**
   * Drops the groups no process is in any more. Linux does not give out a number still in use as
   * a process group, so an empty one could only come back as someone else's: it is never
   * signalled again.
   */
  pruneGroups(): void {
    for (const g of this.groups) {
      try {
        process.kill(-g, 0);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ESRCH') this.groups.delete(g);
      }
    }
  }

  /** Signals every process group of the generation, including its main process's current one. */
  signalAll(signal: NodeJS.Signals): void {
    this.trackMainGroup();
    this.pruneGroups();
    for (const g of this.groups) signalGroup(g, signal);
  }

  /**
   * Signals the whole generation: its groups first, then its strays (`strays` found before, or
   * looked for now: that reads /proc, which takes a while on a busy host). Returns the strays.
   */
  async signalWhole(
    signal: NodeJS.Signals,
    strays?: readonly number[],
  ): Promise<readonly number[]> {
    this.signalAll(signal);
    const found = strays ?? (await this.strays());
    await this.signalStrays(found, signal);
    return found;
  }

  /** Whether anything of the generation is left: a process in its groups, or one of `strays`. */
  async anyLeft(strays: readonly number[]): Promise<boolean> {
    this.pruneGroups();
    if (this.groups.size > 0) return true;
    for (const pid of strays) if (await this.carriesEnvironment(pid)) return true;
    return false;
  }

  /** Whether `pid` is the main process's descendant, or carries the generation's environment. */
  async belongs(pid: number): Promise<boolean> {
    for (let p = pid, hops = 0; p > 1 && hops < 64; hops++) {
      if (p === this.record.pid) return true;
      const info = processInfo(p);
      if (!info) break;
      p = info.ppid;
    }
    // Its parent may have exited already (a daemon's double fork): its environment tells.
    return this.carriesEnvironment(pid);
  }

  /**
   * Live processes outside the generation's groups that carry its environment (a child that
   * called setsid()). Only a generation with a notify socket can be told apart this way: the
   * socket's path is random.
   */
  private async strays(): Promise<number[]> {
    if (this.record.notifySocket === undefined) return [];
    this.trackMainGroup();
    // Only processes of the app's user that started with or after the generation (a minute's
    // margin: the boot time is in whole seconds and the wall clock may have been set since):
    // their environment is all that is read.
    const since = Date.parse(this.record.startedAt) - 60_000;
    const others = new Set<number>();
    for (const gen of running) if (gen !== this) for (const g of gen.groups) others.add(g);
    const found: number[] = [];
    const entries = await readdir('/proc').catch(() => [] as string[]);
    for (const [i, entry] of entries.entries()) {
      if (!/^\d+$/.test(entry)) continue;
      await scanPause(i);
      const pid = Number(entry);
      // One read decides for nearly every process on the host; the rest are the few new ones.
      const info = processInfo(pid);
      if (!info || info.zombie || this.groups.has(info.pgid) || others.has(info.pgid)) continue;
      if ((info.startedAtMs ?? Infinity) < since) continue;
      const owner = await stat(`/proc/${entry}`).catch(() => undefined);
      if (owner?.uid !== this.uid) continue;
      if (await this.carriesEnvironment(pid)) found.push(pid);
    }
    return found;
  }

  /**
   * Signals the `strays` found before, each only while it still carries the generation's
   * environment and is not in one of its groups (signalled already).
   */
  private async signalStrays(strays: readonly number[], signal: NodeJS.Signals): Promise<void> {
    for (const pid of strays) {
      const info = processInfo(pid);
      if (!info || this.groups.has(info.pgid) || !(await this.carriesEnvironment(pid))) continue;
      try {
        process.kill(pid, signal);
      } catch {
        // Gone already.
      }
    }
  }

  private async carriesEnvironment(pid: number): Promise<boolean> {
    if (this.record.notifySocket === undefined) return false;
    const environ = await readFile(`/proc/${pid}/environ`, 'utf8').catch(() => '');
    const vars = new Set(environ.split('\0'));
    return (
      vars.has(`BATON_APP=${this.appName}`) &&
      vars.has(`BATON_GENERATION=${this.record.number}`) &&
      vars.has(`NOTIFY_SOCKET=${this.record.notifySocket}`)
    );
  }
}
