import { z } from 'zod';

/** A release id: stable and readable, e.g. `20261124-153000-abc1234`. */
export const ReleaseIdSchema = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/, 'use letters, digits, _ . - (at most 64)');

export const Sha256Schema = z.string().regex(/^[0-9a-f]{64}$/, 'a lowercase hex sha256');

/** What travels with every artifact; the signature covers exactly this object (canonical JSON). */
export const ManifestSchema = z
  .object({
    version: z.literal(1),
    /** The app this artifact is for. */
    app: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/),
    releaseId: ReleaseIdSchema,
    archive: z
      .object({
        /** sha256 of the .tar.gz bytes. */
        sha256: Sha256Schema,
        size: z.number().int().nonnegative(),
        /** Regular files, directories and symlinks in the archive. */
        entries: z.number().int().nonnegative(),
      })
      .strict(),
    git: z
      .object({
        sha: z
          .string()
          .regex(/^[0-9a-f]{7,64}$/)
          .optional(),
        ref: z.string().max(256).optional(),
      })
      .strict()
      .optional(),
    run: z
      .object({
        repository: z.string().max(256).optional(),
        id: z.string().max(64).optional(),
        attempt: z.string().max(16).optional(),
        actor: z.string().max(128).optional(),
      })
      .strict()
      .optional(),
    createdAt: z.string().datetime(),
    tool: z.object({ name: z.literal('baton'), version: z.string().max(64) }).strict(),
  })
  .strict();
export type Manifest = z.infer<typeof ManifestSchema>;

export const SignatureSchema = z
  .object({
    alg: z.literal('ed25519'),
    /** Identifies the public key: the first 16 hex digits of sha256 of its raw 32 bytes. */
    keyId: z.string().regex(/^[0-9a-f]{16}$/),
    /** base64 of the 64-byte signature over canonicalJson(manifest). */
    value: z.string().regex(/^[A-Za-z0-9+/]{86}==$/),
  })
  .strict();
export type Signature = z.infer<typeof SignatureSchema>;

/** The manifest file that sits beside an archive: the manifest and, normally, its signature. */
export const SignedManifestSchema = z
  .object({ manifest: ManifestSchema, signature: SignatureSchema.optional() })
  .strict();
export type SignedManifest = z.infer<typeof SignedManifestSchema>;

/** JSON with object keys sorted at every level: the bytes a signature covers. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}
