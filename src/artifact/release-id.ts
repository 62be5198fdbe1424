import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BatonError, formatIssues } from '../errors.js';
import { ManifestSchema, type Manifest } from '../protocol/manifest.js';

const HEX = /^[0-9a-f]{7,64}$/i;

/**
 * `YYYYMMDD-HHMMSS-<7 hex>` in UTC: sortable by time, and the hex says what was built: the git
 * commit when there is one, otherwise the start of the archive's sha256.
 */
export function makeReleaseId(
  date: Date,
  gitSha: string | undefined,
  archiveSha256: string,
): string {
  const hex = gitSha ?? archiveSha256;
  if (!HEX.test(hex))
    throw new BatonError(
      'MANIFEST_INVALID',
      `"${hex}" is not a ${gitSha === undefined ? 'sha256' : 'git commit sha'}: expected hex digits`,
    );
  if (Number.isNaN(date.getTime())) throw new BatonError('MANIFEST_INVALID', 'invalid date');
  const stamp = date.toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
  return `${stamp}-${hex.slice(0, 7).toLowerCase()}`;
}

/**
 * Refuses a release id the store could confuse with its own files: one ending in `.json`, the
 * suffix of its release records. The store keeps records in a folder of their own, so today
 * nothing collides; the rule stays so that no store laid out the old way (records beside the
 * release folders, migrated at start), nor a tool reading one, can mistake a release for a record.
 */
export function checkStorableReleaseId(id: string): void {
  if (/\.json$/i.test(id))
    throw new BatonError(
      'RELEASE_ID_INVALID',
      `release id "${id}" ends in .json, which the release store keeps for its records; choose an id without that ending (the default, YYYYMMDD-HHMMSS-<sha>, never has it)`,
    );
}

export interface ManifestInput {
  app: string;
  releaseId: string;
  archive: { sha256: string; size: number; entries: number };
  git?: Manifest['git'];
  run?: Manifest['run'];
  now: Date;
}

/** Builds and validates the manifest of a packed archive. */
export function buildManifest(input: ManifestInput): Manifest {
  checkStorableReleaseId(input.releaseId);
  const parsed = ManifestSchema.safeParse({
    version: 1,
    app: input.app,
    releaseId: input.releaseId,
    archive: {
      sha256: input.archive.sha256,
      size: input.archive.size,
      entries: input.archive.entries,
    },
    // Left out rather than present as undefined, so the manifest round-trips through JSON as is.
    ...(input.git !== undefined && { git: input.git }),
    ...(input.run !== undefined && { run: input.run }),
    createdAt: input.now.toISOString(),
    tool: { name: 'baton', version: toolVersion() },
  });
  if (!parsed.success)
    throw new BatonError('MANIFEST_INVALID', `manifest: ${formatIssues(parsed.error)}`);
  return parsed.data;
}

let version: string | undefined;

/** baton's version, from the nearest package.json named baton above this module (src/ or build/src/). */
export function toolVersion(): string {
  if (version !== undefined) return version;
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    try {
      const pkg = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as {
        name?: unknown;
        version?: unknown;
      };
      if (pkg.name === 'baton' && typeof pkg.version === 'string') return (version = pkg.version);
    } catch {
      // no package.json here: look further up
    }
    const parent = path.dirname(dir);
    if (parent === dir) return (version = '0.0.0-unknown');
    dir = parent;
  }
}
