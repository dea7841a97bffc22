import { destination, type Logger as PinoLogger, pino } from "pino";

export type Logger = PinoLogger;

/** Structured logs on stderr. Secrets, token bodies and intent bytes are never logged. */
export function createLogger(level: string): Logger {
  return pino({ level, base: { component: "kpip-kernel" } }, destination(2));
}
