/**
 * Output conventions of the CLI: with `--json`, stdout holds exactly one JSON document; human text,
 * progress and warnings always go to stderr, so scripts can pipe stdout safely.
 */

/** Converts bigint values to hex strings ("0x...") so JSON output never loses precision. */
export function toJson(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v), 2);
}

let jsonPrinted = false;

export function printJson(value: unknown): void {
  jsonPrinted = true;
  process.stdout.write(`${toJson(value)}\n`);
}

/** Whether a JSON document went to stdout already (the error handler prints one only if not). */
export function printedJson(): boolean {
  return jsonPrinted;
}

/** Human-readable output: to stdout when not in JSON mode, else to stderr. */
export function say(json: boolean, text: string): void {
  (json ? process.stderr : process.stdout).write(`${text}\n`);
}

/** Progress/status line, always on stderr. */
export function progress(text: string): void {
  process.stderr.write(`${text}\n`);
}

export function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex');
}

/**
 * A status line for long work, rewritten in place on a terminal; nothing when stderr is not a
 * TTY or the command prints JSON (scripts and logs get no noise). Call `done()` at the end.
 */
export function liveStatus(json: boolean): { update(text: string): void; done(): void } {
  if (json || !process.stderr.isTTY) return { update: () => undefined, done: () => undefined };
  let shown = false;
  let last = 0;
  return {
    update(text: string): void {
      const now = Date.now();
      if (now - last < 100) return; // a terminal needs no more than 10 updates a second
      last = now;
      const width = (process.stderr.columns || 80) - 1;
      process.stderr.write(`\r${text.slice(0, width).padEnd(width)}`);
      shown = true;
    },
    done(): void {
      if (shown) process.stderr.write(`\r${' '.repeat((process.stderr.columns || 80) - 1)}\r`);
      shown = false;
    },
  };
}
