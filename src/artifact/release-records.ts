import { randomBytes } from 'node:crypto';
import { lstat, mkdir, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { BatonError, errorMessage, formatIssues } from '../errors.js';
import { ManifestSchema, ReleaseIdSchema, SignatureSchema } from '../protocol/manifest.js';

/** What the store keeps of each release besides its unpacked tree. */
export const ReleaseRecordSchema = z
  .object({
    manifest: ManifestSchema,
    signature: SignatureSchema.optional(),
    preparedAt: z.string(),
    failed: z
      .object({ at: z.string(), reason: z.string().max(2000) })
      .strict()
      .optional(),
  })
  .strict();
export type ReleaseRecord = z.infer<typeof ReleaseRecordSchema>;

/**
 * An id as a file name in the store: only a valid release id (no `/`, never `.` or `..`), so
 * never a path out of the store's folders. RELEASE_UNKNOWN for anything else.
 */
export function releaseFileName(id: string): string {
  if (!ReleaseIdSchema.safeParse(id).success) throw unknownRelease(id);
  return id;
}

export function unknownRelease(id: string): BatonError {
  return new BatonError(
    'RELEASE_UNKNOWN',
    `no release "${id.slice(0, 80)}" on this host; see "baton releases" for what is kept`,
  );
}

/**
 * The store's release records, `records/<id>.json`: a folder of their own, apart from the
 * unpacked releases. Stores from before kept them as `releases/<id>.json`, beside
 * `releases/<id>/`, so a release id ending in `.json` turned another release's record into a
 * folder; `migrate` moves such stores' records here.
 */
export class ReleaseRecords {
  constructor(
    readonly dir: string,
    /** For writes: a temp file there, then a rename. Same file system. */
    private readonly tmp: string,
  ) {}

  /**
   * Creates the folder and moves every record an older store kept in `releasesDir`: each
   * regular file `<id>.json` there (a folder with such a name is a release whose id ends in
   * .json, and stays). By rename, one by one: a crash halfway leaves each record in one place or
   * the other, and the next start moves the rest.
   */
  async init(releasesDir: string): Promise<void> {
    // The agent's alone: an app reads its release, never the store's bookkeeping.
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    for (const name of await readdir(releasesDir)) {
      if (!name.endsWith('.json')) continue;
      const from = path.join(releasesDir, name);
      if (!(await lstat(from).catch(() => undefined))?.isFile()) continue;
      await rename(from, path.join(this.dir, name));
    }
  }

  private file(id: string): string {
    return path.join(this.dir, `${releaseFileName(id)}.json`);
  }

  /** Ids of every record, in no order. */
  async ids(): Promise<string[]> {
    return (await readdir(this.dir).catch(() => [] as string[]))
      .filter((n) => n.endsWith('.json'))
      .map((n) => n.slice(0, -'.json'.length))
      .filter((id) => ReleaseIdSchema.safeParse(id).success);
  }

  /** The record of `id`, undefined when there is none; MANIFEST_INVALID when it is damaged. */
  async read(id: string): Promise<ReleaseRecord | undefined> {
    const file = this.file(id);
    const text = await readFile(file, 'utf8').catch(() => undefined);
    if (text === undefined) return undefined;
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch (err) {
      throw new BatonError(
        'MANIFEST_INVALID',
        `release record ${file} is damaged: ${errorMessage(err)}`,
      );
    }
    const parsed = ReleaseRecordSchema.safeParse(raw);
    if (!parsed.success)
      throw new BatonError(
        'MANIFEST_INVALID',
        `release record ${file} is damaged: ${formatIssues(parsed.error)}`,
      );
    // The signature covers the manifest's release id: a record under another name would lend
    // one release's signature to another's folder.
    if (parsed.data.manifest.releaseId !== id)
      throw new BatonError(
        'MANIFEST_INVALID',
        `release record ${file} is for release ${parsed.data.manifest.releaseId}, not ${id}; remove it`,
      );
    return parsed.data;
  }

  async write(id: string, record: ReleaseRecord): Promise<void> {
    const file = this.file(id);
    const tmp = path.join(this.tmp, `record-${process.pid}-${randomBytes(6).toString('hex')}`);
    await writeFile(tmp, JSON.stringify(record, null, 2) + '\n');
    await rename(tmp, file);
  }

  async remove(id: string): Promise<void> {
    await rm(this.file(id), { force: true });
  }
}
