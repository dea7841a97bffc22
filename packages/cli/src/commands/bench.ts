import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { Command } from "../command.js";
import { EXIT, UsageError } from "../util.js";

// The benchmark ships with the kernel package's build in this repository (not in its npm files).
const BENCH = fileURLToPath(new URL("../../../../kernel/dist/bench/side-by-side/bench.js", import.meta.url));

export const benchCommand: Command = {
  name: "bench",
  summary: "kpip side by side with a raw Unix-socket and a grpc-js baseline (see BENCHMARKS.md)",
  usage: "kpip bench [--quick] [--json]",
  example: "kpip bench --quick --json",
  options: {
    quick: { type: "boolean", description: "a short run (under a minute) instead of the full one (under ten)" },
    json: { type: "boolean", description: "JSON Lines: one {name, unit, value, baseline?, ratio?} per measurement" },
  },
  async run(v, positionals) {
    if (positionals.length > 0) throw new UsageError(`kpip bench takes no arguments (got ${positionals.join(" ")})`);
    if (!existsSync(BENCH)) {
      process.stderr.write(`kpip bench: ${BENCH} is missing; run it from a built checkout (npm run build)\n`);
      return EXIT.FAILED;
    }
    const args = [BENCH, ...(v.quick ? ["--quick"] : []), ...(v.json ? ["--json"] : [])];
    const child = spawn(process.execPath, args, { stdio: "inherit" });
    const code = await new Promise<number | null>((r) => child.once("exit", (c) => r(c)));
    return code === 0 ? EXIT.OK : EXIT.FAILED;
  },
};
