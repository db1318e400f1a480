// Limits of a package's signed metadata, in a module of its own so that the CLI's help text can
// name them without loading the codec.

/** Severities a package may declare (`hotpatch build --severity`). */
export const PATCH_SEVERITIES = ['low', 'medium', 'high', 'critical'] as const;
export type PatchSeverity = (typeof PATCH_SEVERITIES)[number];
/** Shape of a CVE id (MITRE: CVE-YYYY-NNNN, four or more digits). */
export const CVE_ID = /^CVE-\d{4}-\d{4,}$/;
/** Most CVE ids one package may carry. */
export const MAX_CVES = 255;
