import { parseArgs } from "node:util";
import { printable } from "./audit/printable.js";
import { EXIT, UsageError } from "./util.js";

export interface OptionSpec {
  type: "string" | "boolean";
  short?: string;
  multiple?: boolean;
  description: string;
}

export type Values = Record<string, string | boolean | string[] | boolean[] | undefined>;

/** One command: its help is generated from this definition. */
export interface Command {
  name: string;
  summary: string;
  usage: string;
  example: string;
  options: Record<string, OptionSpec>;
  run(values: Values, positionals: string[]): Promise<number>;
}

/** A command known by name; its module (and what it imports) loads only when it runs. */
export interface CommandEntry {
  readonly name: string;
  load(): Promise<Command>;
}

export function helpText(c: Command): string {
  const opts = Object.entries(c.options).map(([name, o]) => {
    const flag = `${o.short ? `-${o.short}, ` : ""}--${name}${o.type === "string" ? " <value>" : ""}`;
    return `  ${flag.padEnd(32)} ${o.description}`;
  });
  return [
    `kpip ${c.name} — ${c.summary}`,
    "",
    `usage: ${c.usage}`,
    "",
    "options:",
    ...opts,
    `  ${"-h, --help".padEnd(32)} show this help`,
    "",
    "example:",
    `  ${c.example}`,
    "",
  ].join("\n");
}

/** A command-line mistake: exit 2, with the usage hint (or one JSON line on stdout under --json). */
function usageError(c: Command, message: string, json: boolean): number {
  if (json) process.stdout.write(`${JSON.stringify({ error: "UsageError", message })}\n`);
  // A message may quote what a file held (a tampered home's config.json, in a JSON parse error): shown, never obeyed.
  else process.stderr.write(`kpip ${c.name}: ${printable(message)}\nrun \`kpip ${c.name} --help\` for usage\n`);
  return EXIT.USAGE;
}

/**
 * The first single-value option given more than once, if any. parseArgs keeps the last value;
 * `--persona a --persona b` (a pasted line, a wrapper that adds its own) would act on one the
 * user may not have meant. Repeatable options (`multiple`) and flags are not counted.
 */
function repeatedOption(c: Command, tokens: NonNullable<ReturnType<typeof parseArgs>["tokens"]>): string | undefined {
  const seen = new Set<string>();
  for (const t of tokens) {
    if (t.kind !== "option") continue;
    const spec = c.options[t.name];
    if (spec?.type !== "string" || spec.multiple) continue;
    if (seen.has(t.name)) return t.name;
    seen.add(t.name);
  }
  return undefined;
}

/** Parses argv for a command and runs it; usage errors exit 2 with a hint. */
export async function runCommand(c: Command, argv: string[]): Promise<number> {
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({
      args: argv,
      options: { ...c.options, help: { type: "boolean", short: "h" } },
      allowPositionals: true,
      strict: true,
      tokens: true,
    });
  } catch (e) {
    return usageError(c, (e as Error).message, argv.includes("--json"));
  }
  const twice = repeatedOption(c, parsed.tokens ?? []);
  if (twice) return usageError(c, `--${twice} is given more than once: it takes one value`, parsed.values.json === true);
  if (parsed.values.help) {
    process.stdout.write(helpText(c));
    return EXIT.OK;
  }
  try {
    return await c.run(parsed.values as Values, parsed.positionals);
  } catch (e) {
    if (e instanceof UsageError) return usageError(c, e.message, parsed.values.json === true);
    throw e;
  }
}

export { hoistGlobals } from "./globals.js";
