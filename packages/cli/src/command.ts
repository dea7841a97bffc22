import { parseArgs } from "node:util";
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
  else process.stderr.write(`kpip ${c.name}: ${message}\nrun \`kpip ${c.name} --help\` for usage\n`);
  return EXIT.USAGE;
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
    });
  } catch (e) {
    return usageError(c, (e as Error).message, argv.includes("--json"));
  }
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

/** Options every command takes that may also stand before the command name (`kpip --home H call …`). */
const GLOBAL_WITH_VALUE = new Set(["--home", "--socket", "--identity", "--token"]);
const GLOBAL_BOOLEAN = new Set(["--json"]);

/** Moves global options given before the command name to after it, where the command parses them. */
export function hoistGlobals(argv: readonly string[]): string[] {
  const globals: string[] = [];
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i] as string;
    const flag = a.includes("=") ? a.slice(0, a.indexOf("=")) : a;
    if (GLOBAL_BOOLEAN.has(a)) globals.push(a);
    else if (GLOBAL_WITH_VALUE.has(flag)) {
      globals.push(a);
      if (flag === a && i + 1 < argv.length) globals.push(argv[++i] as string);
    } else break;
  }
  const [name, ...rest] = argv.slice(i);
  return name === undefined ? [...globals] : [name, ...globals, ...rest];
}
