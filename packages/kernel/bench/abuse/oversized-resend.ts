import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { type Attack, sleep } from "./attack.js";

const MAIN = fileURLToPath(new URL("../../../../cli/dist/src/main.js", import.meta.url));

/** Finding 12: `kpip call storage.write … --data-file` with a 20 MB file (over the 16 MiB body limit). */
export const oversizedResend: Attack = {
  name: "oversized-resend",
  finding: 12,
  summary: "kpip call storage.write with a 20 MB file, over the negotiated body limit",
  async run(ctx) {
    const file = join(ctx.home, "big.bin");
    writeFileSync(file, Buffer.alloc(20 * 1024 * 1024, 1));
    const started = Date.now();
    const child = spawn(
      process.execPath,
      [MAIN, "call", "storage.write", "obj://ws1/big", "--data-file", file, "--home", ctx.home],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    let stderr = "";
    child.stderr?.on("data", (d) => {
      stderr += d;
    });
    const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
    // The CLI's own start-up is not the kernel's to answer for: on a loaded machine it can take
    // longer than the attack window, so only a CLI that never ends (the finding: it hung
    // resending) counts as a failure.
    let timer: NodeJS.Timeout | undefined;
    const code = await Promise.race([
      exited,
      new Promise<"running">((r) => {
        timer = setTimeout(() => r("running"), 120_000);
      }),
    ]);
    clearTimeout(timer);
    if (code === "running") {
      child.kill("SIGKILL");
      await exited;
      return { note: `the CLI was still running after ${((Date.now() - started) / 1000).toFixed(1)} s`, ok: false };
    }
    const s = ((Date.now() - started) / 1000).toFixed(1);
    while (!ctx.signal.aborted) await sleep(100, ctx.signal);
    return { note: `the CLI exited ${code} in ${s} s: ${stderr.trim().split("\n")[0] ?? ""}`, ok: code === 1 };
  },
};
