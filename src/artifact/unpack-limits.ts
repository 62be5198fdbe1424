/** How much a release archive may unpack to; every check that fails refuses the whole archive. */
export interface UnpackLimits {
  /**
   * Filesystem objects created: regular files, directories and symlinks, including the parent
   * directories an entry implies without listing them (they cost inodes all the same).
   */
  maxFiles: number;
  /** Bytes of regular-file content, by the sizes headers declare and by the bytes that arrive. */
  maxBytes: number;
  /**
   * Decompressed tar bytes (headers and padding included) per compressed byte read so far.
   * Judged only once the output passes {@link RATIO_GRACE_BYTES}.
   */
  maxRatio: number;
}

export const DEFAULT_UNPACK_LIMITS: UnpackLimits = Object.freeze({
  maxFiles: 100_000,
  maxBytes: 2 * 1024 ** 3,
  maxRatio: 200,
});

/**
 * Below this much decompressed output the ratio is not judged: a small archive is mostly tar
 * padding (an empty tar is 10 KiB of zeros that gzip to ~45 bytes, a ratio of ~230), and a bomb
 * has done no harm yet.
 */
export const RATIO_GRACE_BYTES = 1024 * 1024;

/** The defaults with the caller's overrides; a limit that is not a positive number is a bug. */
export function resolveLimits(overrides: Partial<UnpackLimits> = {}): UnpackLimits {
  const limits = { ...DEFAULT_UNPACK_LIMITS };
  for (const key of Object.keys(limits) as (keyof UnpackLimits)[]) {
    const value = overrides[key];
    if (value === undefined) continue;
    if (typeof value !== 'number' || Number.isNaN(value) || value <= 0)
      throw new RangeError(`unpack limit ${key} must be a positive number, got ${String(value)}`);
    limits[key] = value;
  }
  return limits;
}
