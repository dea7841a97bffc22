// No imports on purpose: the entry point reads the command name with this before it knows what to load.

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
