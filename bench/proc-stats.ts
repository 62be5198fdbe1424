// What Linux's /proc says about a process and the machine, for bench/transfer.ts.
import { readFile } from 'node:fs/promises';

/** USER_HZ: the unit of /proc's CPU times, 100 on every Linux build user space sees. */
const TICKS_PER_SECOND = 100;

/** Peak resident set (VmHWM) of `pid` in KiB. */
export async function peakRssKiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const match = /^VmHWM:\s+(\d+) kB$/m.exec(status);
  if (!match) throw new Error(`/proc/${pid}/status has no VmHWM line`);
  return Number(match[1]);
}

/** User + system CPU seconds `pid` has used so far. */
export async function cpuSeconds(pid: number): Promise<number> {
  const { user, system } = await cpuSplit(pid);
  return user + system;
}

/** CPU seconds `pid` has used so far in user space and in the kernel (its system calls). */
export async function cpuSplit(pid: number): Promise<{ user: number; system: number }> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // utime and stime are fields 14 and 15, the 12th and 13th after the name.
  return {
    user: Number(fields[11]) / TICKS_PER_SECOND,
    system: Number(fields[12]) / TICKS_PER_SECOND,
  };
}

/** CPU seconds the whole machine has been busy so far, summed over its cores (/proc/stat). */
export async function machineBusySeconds(): Promise<number> {
  const stat = await readFile('/proc/stat', 'utf8');
  const values = stat.split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest time is already in user).
  const total = values.slice(0, 8).reduce((a, b) => a + b, 0);
  return (total - values[3]! - values[4]!) / TICKS_PER_SECOND;
}
