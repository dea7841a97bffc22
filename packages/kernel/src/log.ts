import { escapeUnprintable } from "@kpip/protocol";
import { type DestinationStream, destination, type Logger as PinoLogger, pino } from "pino";

export type Logger = PinoLogger;

const LEVEL_NAMES: Record<number, string> = { 10: "TRACE", 20: "DEBUG", 30: "INFO", 40: "WARN", 50: "ERROR", 60: "FATAL" };

/** A field value that cannot be taken for more than one value: quoted unless a plain word. */
function fieldValue(v: unknown): string {
  if (typeof v === "string" && /^[\w.:/@+,-]*$/.test(v)) return v;
  return JSON.stringify(v) ?? String(v);
}

/**
 * Log lines for a person at a terminal: `HH:MM:SS.mmm LEVEL message key=value…` (UTC), in place
 * of the JSON that supervisors and log shippers read. Only used when stderr is a TTY.
 * Fields carry text personas chose (agent ids, error messages naming their programs): a value with
 * a space or `=` is quoted so it cannot forge fields, and every control, bidirectional formatting or invisible
 * character becomes a visible `\u{…}` escape so it cannot forge lines or drive the terminal.
 */
export function humanLines(out: { write(text: string): unknown } = process.stderr): DestinationStream {
  return {
    write(line: string) {
      let o: Record<string, unknown>;
      try {
        o = JSON.parse(line) as Record<string, unknown>;
      } catch {
        out.write(`${escapeUnprintable(line.replace(/\n$/, ""))}\n`);
        return;
      }
      const { level, time, msg, component: _c, ...fields } = o;
      const rest = Object.entries(fields)
        .map(([k, v]) => ` ${k}=${fieldValue(v)}`)
        .join("");
      const when = new Date(Number(time)).toISOString().slice(11, 23);
      const name = (LEVEL_NAMES[Number(level)] ?? String(level)).padEnd(5);
      out.write(`${escapeUnprintable(`${when} ${name} ${String(msg ?? "")}${rest}`)}\n`);
    },
  };
}

/**
 * Structured logs on stderr: JSON lines, or readable lines when stderr is a terminal. Secrets,
 * token bodies and intent bytes are never logged.
 */
export function createLogger(level: string, human = process.stderr.isTTY === true): Logger {
  return pino({ level, base: { component: "kpip-kernel" } }, human ? humanLines() : destination(2));
}
