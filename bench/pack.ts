// `npm run bench:pack`: packs a generated tree of mixed files with baton and with Debian's
// `tar czf`, verifies the digest, unpacks it (when src/artifact/unpack.ts exists), and prints
// throughput and peak RSS per step, each measured in a process of its own.
// Exits 1 when baton misses a bar: peak RSS < 150 MiB per step, pack at least half as fast as
// `tar czf`.
import { spawn } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { access, mkdir, open, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { packDirectory } from '../src/artifact/pack.js';
import { buildManifest } from '../src/artifact/release-id.js';
import { verifyArchiveDigest } from '../src/artifact/sign.js';
import { unpackRelease } from '../src/artifact/unpack.js';
import { tempDir } from '../support/temp-dir.js';
import { cleanupOnSignal } from './interrupt.js';
import { formatTable, fmtInt, type Column } from './table.js';

const MiB = 1024 * 1024;
const RSS_BAR_MIB = 150;
const PACK_FACTOR = 2;
/** Files in the generated tree at most; past it, only big files are added. */
const MAX_FILES = 50_000;
const SELF = fileURLToPath(import.meta.url);

function envInt(name: string, fallback: number, min: number, max: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max)
    throw new Error(`${name}=${raw}: expected an integer from ${min} to ${max}`);
  return value;
}

/** What a child reports: time spent on the step alone, and its peak RSS. */
interface Measured {
  ms: number;
  maxRssKiB: number | undefined;
  extra?: Record<string, unknown>;
}

// ---- child side: one step per process, so each peak RSS is that step's own ----

async function child(step: string, args: string[]): Promise<void> {
  const t0 = performance.now();
  let extra: Record<string, unknown> = {};
  if (step === 'pack') {
    const r = await packDirectory(args[0]!, args[1]!);
    extra = { sha256: r.sha256, size: r.size, entries: r.entries };
  } else if (step === 'verify') {
    const [archive, sha256, size] = args as [string, string, string];
    const manifest = buildManifest({
      app: 'bench',
      releaseId: 'bench',
      archive: { sha256, size: Number(size), entries: 0 },
      now: new Date(),
    });
    await verifyArchiveDigest(archive, manifest);
  } else if (step === 'unpack') {
    await unpackRelease(args[0]!, args[1]!);
  } else throw new Error(`unknown step ${step}`);
  const result: Measured = {
    ms: performance.now() - t0,
    maxRssKiB: process.resourceUsage().maxRSS,
    extra,
  };
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

// ---- parent side ----

function run(
  command: string,
  args: string[],
): Promise<{ ms: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const proc = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    proc.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    proc.on('error', reject);
    proc.on('close', (code, signal) => {
      const ms = performance.now() - t0;
      if (code === 0) resolve({ ms, stdout, stderr });
      else reject(new Error(`${command} ${args.join(' ')}: ${signal ?? code}\n${stderr}`));
    });
  });
}

async function inChild(step: string, ...args: string[]): Promise<Measured> {
  const { stdout } = await run(process.execPath, [SELF, '--child', step, ...args]);
  return JSON.parse(stdout.trim().split('\n').pop()!) as Measured;
}

/** `tar` under GNU time when it is there, for the peak RSS of tar and the gzip it runs. */
async function external(args: string[]): Promise<Measured> {
  const time = '/usr/bin/time';
  const haveTime = await access(time).then(
    () => true,
    () => false,
  );
  if (!haveTime) return { ms: (await run('tar', args)).ms, maxRssKiB: undefined };
  const { ms, stderr } = await run(time, ['-f', 'maxrss=%M', 'tar', ...args]);
  const match = /maxrss=(\d+)/.exec(stderr);
  return { ms, maxRssKiB: match ? Number(match[1]) : undefined };
}

/** A deterministic PRNG (xorshift32): the same tree shape every run. */
function prng(seed: number): () => number {
  let x = seed | 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 0x1_0000_0000;
  };
}

/** Log-like text that gzip shrinks about as much as real sources and logs (3-6x). */
function textPool(rand: () => number, bytes: number): Buffer {
  const words = ['GET', 'POST', 'items', 'users', 'orders', 'ok', 'retry', 'cache', 'miss', 'hit'];
  const lines: string[] = [];
  let size = 0;
  while (size < bytes) {
    const n = Math.floor(rand() * 1e9);
    const w = words[n % words.length]!;
    const line = `2026-11-24T15:${String(n % 60).padStart(2, '0')}:00.${n % 1000}Z ${w} /api/${words[(n >> 3) % words.length]}/${n % 100_000} status=${200 + (n % 5)} ms=${n % 977} req=${n.toString(36)}\n`;
    lines.push(line);
    size += line.length;
  }
  return Buffer.from(lines.join(''));
}

/**
 * Writes about `totalBytes` of files under `dir`: mostly small ones, some medium, a few big;
 * half pseudo-random (incompressible), half text. Returns the bytes and files written.
 */
async function generateTree(
  dir: string,
  totalBytes: number,
): Promise<{ bytes: number; files: number }> {
  const rand = prng(0x5eed);
  const pool = textPool(rand, 8 * MiB);
  const chunk = Buffer.alloc(MiB);
  let bytes = 0;
  let textBytes = 0;
  let files = 0;
  while (bytes < totalBytes) {
    const r = rand();
    const size = Math.min(
      totalBytes - bytes,
      files >= MAX_FILES || r > 0.98
        ? MiB + Math.floor(rand() * 15 * MiB)
        : r > 0.85
          ? 32 * 1024 + Math.floor(rand() * (MiB - 32 * 1024))
          : 256 + Math.floor(rand() * 32 * 1024),
    );
    // Half the bytes each: by count, the few big files would decide the mix.
    const text = textBytes * 2 < bytes + size;
    const sub = path.join(dir, `d${Math.floor(files / 400)}`, `e${Math.floor(files / 40) % 10}`);
    await mkdir(sub, { recursive: true });
    const handle = await open(path.join(sub, `f${files}.${text ? 'txt' : 'bin'}`), 'wx');
    try {
      for (let left = size; left > 0;) {
        const n = Math.min(left, MiB);
        if (text) {
          const at = Math.floor(rand() * (pool.length - n));
          await handle.write(pool, at, n);
        } else await handle.write(randomFillSync(chunk, 0, n), 0, n);
        left -= n;
      }
    } finally {
      await handle.close();
    }
    bytes += size;
    if (text) textBytes += size;
    files++;
  }
  return { bytes, files };
}

async function treeStats(dir: string): Promise<{ bytes: number; files: number }> {
  let bytes = 0;
  let files = 0;
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (!entry.isFile()) continue;
    files++;
    bytes += (await stat(path.join(entry.parentPath, entry.name))).size;
  }
  return { bytes, files };
}

interface Row {
  step: string;
  /** Bytes the step reads or writes, by which its throughput is counted. */
  bytes: number;
  of: string;
  m: Measured;
  /** Held to the RSS bar. */
  baton: boolean;
}

async function main(): Promise<void> {
  const mib = envInt('BENCH_PACK_MB', 1024, 1, 16 * 1024);
  const tmp = await tempDir('baton-bench-pack-');
  const signals = cleanupOnSignal(tmp.cleanup);
  const progress = (text: string) => process.stderr.write(`${text}\n`);
  try {
    const tree = path.join(tmp.dir, 'tree');
    progress(`generating ${mib} MiB of mixed files in ${tree}`);
    const generated = await generateTree(tree, mib * MiB);
    progress(`${fmtInt(generated.files)} files; packing with baton`);
    const batonOut = path.join(tmp.dir, 'baton.tgz');
    const pack = await inChild('pack', tree, batonOut);
    const packed = pack.extra as { sha256: string; size: number; entries: number };
    progress('packing with tar czf');
    const tarOut = path.join(tmp.dir, 'tar.tgz');
    const tar = await external(['czf', tarOut, '-C', tree, '.']);
    const tarSize = (await stat(tarOut)).size;
    progress('verifying the digest');
    const verify = await inChild('verify', batonOut, packed.sha256, String(packed.size));
    const rows: Row[] = [
      { step: 'baton pack', bytes: generated.bytes, of: 'tree', m: pack, baton: true },
      { step: 'tar czf', bytes: generated.bytes, of: 'tree', m: tar, baton: false },
      { step: 'baton verify (sha256)', bytes: packed.size, of: 'archive', m: verify, baton: true },
    ];
    progress('unpacking with baton');
    const dest = path.join(tmp.dir, 'unpacked');
    const unpack = await inChild('unpack', batonOut, dest);
    const out = await treeStats(dest);
    if (out.bytes !== generated.bytes || out.files !== generated.files)
      throw new Error(
        `unpacked ${out.files} files, ${out.bytes} bytes; packed ${generated.files}, ${generated.bytes}`,
      );
    rows.push({
      step: 'baton unpack',
      bytes: generated.bytes,
      of: 'tree',
      m: unpack,
      baton: true,
    });
    const tarDest = path.join(tmp.dir, 'tar-unpacked');
    await mkdir(tarDest);
    const tarX = await external(['xzf', batonOut, '-C', tarDest]);
    rows.push({
      step: 'tar xzf (reference)',
      bytes: generated.bytes,
      of: 'tree',
      m: tarX,
      baton: false,
    });

    const mibps = (r: Row) => r.bytes / MiB / (r.m.ms / 1000);
    const rss = (r: Row) => (r.m.maxRssKiB === undefined ? NaN : r.m.maxRssKiB / 1024);
    const columns: Column[] = [
      { title: 'step', align: 'left' },
      { title: 'MiB', align: 'right' },
      { title: 'of', align: 'left' },
      { title: 'seconds', align: 'right' },
      { title: 'MiB/s', align: 'right' },
      { title: 'peak RSS MiB', align: 'right' },
    ];
    const table = rows.map((r) => [
      r.step,
      (r.bytes / MiB).toFixed(0),
      r.of,
      (r.m.ms / 1000).toFixed(2),
      mibps(r).toFixed(1),
      Number.isNaN(rss(r)) ? '-' : rss(r).toFixed(1),
    ]);
    console.log(
      `\nbaton pack bench: ${mib} MiB, ${fmtInt(generated.files)} files (half pseudo-random, half text), Node ${process.version}`,
    );
    console.log(formatTable(columns, table));
    console.log(
      `archives: baton ${(packed.size / MiB).toFixed(1)} MiB (${fmtInt(packed.entries)} entries), tar czf ${(tarSize / MiB).toFixed(1)} MiB`,
    );

    const misses: string[] = [];
    for (const r of rows)
      if (r.baton && !(rss(r) < RSS_BAR_MIB))
        misses.push(`${r.step}: peak RSS ${rss(r).toFixed(1)} MiB, bar < ${RSS_BAR_MIB} MiB`);
    const [batonPack, tarPack] = [rows[0]!, rows[1]!];
    if (mibps(batonPack) * PACK_FACTOR < mibps(tarPack))
      misses.push(
        `baton pack: ${mibps(batonPack).toFixed(1)} MiB/s, bar ≥ ${(mibps(tarPack) / PACK_FACTOR).toFixed(1)} (tar czf / ${PACK_FACTOR})`,
      );
    if (misses.length) {
      console.log(`\nMISSED:\n  ${misses.join('\n  ')}`);
      process.exitCode = 1;
    } else
      console.log(
        `\nbars met: peak RSS < ${RSS_BAR_MIB} MiB per baton step; pack within ${PACK_FACTOR}x of tar czf`,
      );
  } finally {
    signals.dispose();
    await tmp.cleanup();
  }
}

if (process.argv[2] === '--child') await child(process.argv[3]!, process.argv.slice(4));
else await main();
