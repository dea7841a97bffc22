import { type DestinationStream, destination, type Logger as PinoLogger, pino } from "pino";

export type Logger = PinoLogger;

const LEVEL_NAMES: Record<number, string> = { 10: "TRACE", 20: "DEBUG", 30: "INFO", 40: "WARN", 50: "ERROR", 60: "FATAL" };

/**
 * Log lines for a person at a terminal: `HH:MM:SS.mmm LEVEL message key=value…` (UTC), in place
 * of the JSON that supervisors and log shippers read. Only used when stderr is a TTY.
 */
function humanLines(): DestinationStream {
  return {
    write(line: string) {
      let o: Record<string, unknown>;
      try {
        o = JSON.parse(line) as Record<string, unknown>;
      } catch {
        process.stderr.write(line);
        return;
      }
      const { level, time, msg, component: _c, ...fields } = o;
      const rest = Object.entries(fields)
        .map(([k, v]) => ` ${k}=${typeof v === "string" ? v : JSON.stringify(v)}`)
        .join("");
      const when = new Date(Number(time)).toISOString().slice(11, 23);
      process.stderr.write(`${when} ${(LEVEL_NAMES[Number(level)] ?? String(level)).padEnd(5)} ${String(msg ?? "")}${rest}\n`);
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
