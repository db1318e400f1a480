/** Exit codes of the `hotpatch` command (documented in the README; stable). */
export const EXIT_OK = 0;
export const EXIT_ERROR = 1;
export const EXIT_USAGE = 2;
export const EXIT_REFUSED = 3;
export const EXIT_PARTIAL = 4;
export const EXIT_FINDINGS = 5;
