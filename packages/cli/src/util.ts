import { linkSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import { defaultHome } from "@kpip/kernel/config";
import { type CborValue, KpipError } from "@kpip/protocol";
import { printable } from "./audit/printable.js";

/** Exit codes of every kpip command. */
export const EXIT = {
  OK: 0,
  /** The kernel answered FAILURE, or a check (audit verify) failed. */
  FAILED: 1,
  /** Bad command line. */
  USAGE: 2,
  /** No kernel could be reached. */
  UNAVAILABLE: 3,
  /** `kpip kernel` stopped after its storage failed (a failed sync of the database or an audit segment): the process ends at once, keeping the WAL. */
  STORAGE_FAILED: 4,
  /**
   * `kpip kernel` stopped while its storage was full (ENOSPC, EDQUOT: its last records could not
   * be written): what was acknowledged is kept; free space and start it again.
   */
  STORAGE_FULL: 5,
} as const;

/** A command-line mistake: printed with the command's usage hint, exit code 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/**
 * Gives the finished file `tmp` its name `file`, never replacing what is there: false (and `tmp`
 * kept) when something, a link included, took the name since the caller checked it was free.
 */
export function placeNew(tmp: string, file: string): boolean {
  try {
    linkSync(tmp, file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw e;
  }
  unlinkSync(tmp);
  return true;
}

/**
 * The home the flags name, else $KPIP_HOME, else the default — as the kernel reads them: an
 * empty variable is unset (`KPIP_HOME="$UNSET" kpip …`), never "" (the current directory, whose
 * `kernel.db` or `admin.identity` would then be used); an empty `--home` is a usage error.
 */
export function resolveHome(flag: string | undefined): string {
  if (flag === "") throw new UsageError("--home must not be empty");
  return flag ?? nonEmpty(process.env.KPIP_HOME) ?? defaultHome();
}

/** The socket the kernel of `home` listens on by default: $KPIP_SOCKET (unless empty, as for the kernel), else <home>/kernel.sock. */
export function defaultSocket(home: string): string {
  return nonEmpty(process.env.KPIP_SOCKET) ?? join(home, "kernel.sock");
}

const nonEmpty = (s: string | undefined) => (s === "" ? undefined : s);

/** CBOR values as JSON: byte strings become {"$bytes": base64}, big integers {"$int": "…"}. */
/** A payload (any CBOR value, a typed op result included) as JSON. */
export function toJson(v: unknown): unknown {
  if (v === undefined) return null;
  if (v instanceof Uint8Array) return { $bytes: Buffer.from(v).toString("base64") };
  if (typeof v === "bigint") return { $int: v.toString() };
  if (Array.isArray(v)) return v.map(toJson);
  if (v !== null && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, toJson(x)]));
  return v;
}

/** JSON from the command line as CBOR: {"$bytes": base64} becomes bytes; non-integer numbers are refused. */
export function fromJson(v: unknown, path = "args"): CborValue {
  if (v === null || typeof v === "string" || typeof v === "boolean") return v;
  if (typeof v === "number") {
    if (!Number.isSafeInteger(v))
      throw new UsageError(`${path}: only integers are allowed (got ${v}); send fractions as strings`);
    return v;
  }
  if (Array.isArray(v)) return v.map((x, i) => fromJson(x, `${path}[${i}]`));
  const o = v as Record<string, unknown>;
  if (Object.keys(o).length === 1 && typeof o.$bytes === "string") return Buffer.from(o.$bytes, "base64");
  return Object.fromEntries(Object.entries(o).map(([k, x]) => [k, fromJson(x, `${path}.${k}`)]));
}

/**
 * Human rendering of a payload: text-looking bytes as text, others as a hex preview. Text a peer
 * chose (an event's data, an object's bytes, a kernel's answer) never reaches the terminal raw:
 * JSON quoting leaves C1 controls (`\u009b` is a one-byte CSI) and bidirectional overrides as
 * they are, so they become `\u{…}` escapes (printable).
 */
export function render(v: unknown, indent = ""): string {
  if (v === undefined || v === null) return "null";
  if (v instanceof Uint8Array) {
    const s = Buffer.from(v).toString("utf8");
    if (!/[\u0000-\u0008\u000e-\u001f\ufffd]/.test(s)) return printable(JSON.stringify(s));
    return `<${v.length} bytes ${Buffer.from(v.subarray(0, 32)).toString("hex")}${v.length > 32 ? "…" : ""}>`;
  }
  if (Array.isArray(v)) {
    if (v.length === 0) return "[]";
    return v.map((x) => `\n${indent}- ${render(x, `${indent}  `)}`).join("");
  }
  if (typeof v === "object") {
    const entries = Object.entries(v);
    if (entries.length === 0) return "{}";
    return entries.map(([k, x]) => `\n${indent}${printable(k)}: ${render(x, `${indent}  `)}`).join("");
  }
  return printable(String(v));
}

/** Prints an error and returns the exit code it maps to. */
export function reportError(e: unknown, json: boolean): number {
  const err = e as Error;
  let code: number = EXIT.FAILED;
  if (err instanceof UsageError) code = EXIT.USAGE;
  else if (err.name === "KernelUnavailableError") code = EXIT.UNAVAILABLE;
  // Another user's socket where the kernel's should be: an unsafe socket path, as for `kpip kernel`.
  else if (err.name === "UntrustedSocketError") code = EXIT.USAGE;
  if (json) {
    const out: Record<string, unknown> = { error: err.name, message: err.message };
    if (err instanceof KpipError) out.class = err.errorClass;
    process.stdout.write(`${JSON.stringify(out)}\n`);
  } else if (err instanceof KpipError) {
    // The message is the kernel's: a faulty or hostile one must not drive the terminal either.
    process.stderr.write(`FAILURE ${err.errorClass}: ${printable(err.message)}\n`);
  } else {
    const hint =
      code === EXIT.UNAVAILABLE
        ? "\nkpip: start one with `kpip kernel` (`npm start` in a clone of the repo), or pass --home/--socket"
        : "";
    process.stderr.write(`kpip: ${printable(err.message)}${hint}\n`);
  }
  return code;
}

/** The largest time (ms from the epoch, either way) a Date holds: past it `toISOString` throws. */
const MAX_DATE_MS = 8.64e15;

/**
 * A time (Unix ms) a kernel or a file gave, as ISO 8601 UTC. A value no Date can show (out of
 * range, not a number: a faulty kernel, a crafted token or record) is given as it came, never a
 * throw that loses the rest of the answer.
 */
export function isoTime(t: unknown): string {
  if (typeof t === "number" && Math.abs(t) <= MAX_DATE_MS) return new Date(t).toISOString();
  return String(t);
}

/** A list for people: a header row, columns as wide as their longest cell, "none" when empty. */
export function printTable(header: readonly string[], rows: readonly (readonly string[])[]): void {
  if (rows.length === 0) {
    process.stdout.write("none\n");
    return;
  }
  // Cells come from the kernel's answers (or the audit record): shown, never obeyed, by the terminal.
  const shown = rows.map((r) => r.map((c) => printable(c)));
  const widths = header.map((h, i) => Math.max(h.length, ...shown.map((r) => (r[i] ?? "").length)));
  const line = (cells: readonly string[]) =>
    `${cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join("  ")
      .trimEnd()}\n`;
  process.stdout.write(line(header) + shown.map(line).join(""));
}
