import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { MAIN, runKernel } from "./run.js";

describe("the README walkthrough, verbatim", () => {
  it("runs as written against a kernel started the way npm start starts it", async () => {
    const readme = readFileSync(fileURLToPath(new URL("../../../../README.md", import.meta.url)), "utf8");
    const section = readme.slice(readme.indexOf("## Walkthrough"));
    const script = section.slice(section.indexOf("```sh") + 5, section.indexOf("```", section.indexOf("```sh") + 5));
    assert.match(script, /persona create alice/);
    // a scratch "repository": the same kpip script as the real package.json, the kernel home in ./.kpip
    const dir = mkdtempSync(join(tmpdir(), "kpip-readme-"));
    const root = JSON.parse(readFileSync(fileURLToPath(new URL("../../../../package.json", import.meta.url)), "utf8"));
    writeFileSync(
      join(dir, "package.json"),
      JSON.stringify({
        name: "readme-walkthrough",
        private: true,
        scripts: { kpip: root.scripts.kpip.replace("packages/cli/dist/bundle/kpip.cjs", MAIN) },
      }),
    );
    const k = await runKernel(join(dir, ".kpip"));
    try {
      const env = { ...process.env };
      delete env.KPIP_HOME;
      const r = spawnSync("bash", ["-c", script], { cwd: dir, encoding: "utf8", env });
      const all = r.stdout + r.stderr;
      assert.match(all, /created persona alice/);
      assert.match(all, /SUCCESS\n\s+size: 4/);
      assert.match(all, /FAILURE PERMISSION/);
      assert.match(all, /storage\.read/);
      assert.match(all, /alice\s+refused\s+storage\.write\s+obj:\/\/ws2\/x\s+FAILURE\/PERMISSION/);
      // the timeline: the write's intent and outcome as one row, with its token
      assert.match(
        all,
        /\d+\+\d+\s+\S+Z\s+\S+Z\s+alice\s+\S+\s+\d+\s+storage\.write\s+obj:\/\/ws1\/alice\.txt\s+SUCCESS\s+[0-9a-f]{8}/,
      );
      assert.match(all, /sessions\s+\d+/);
      assert.equal(r.status, 0, all);

      // "Writing a persona": the README's snippet is examples/readme-persona.ts, and it runs
      const example = readFileSync(fileURLToPath(new URL("../../../../examples/readme-persona.ts", import.meta.url)), "utf8");
      const begin = "// --- README snippet ---\n";
      const snippet = example.slice(example.indexOf(begin) + begin.length, example.indexOf("// --- end of README snippet ---"));
      assert.ok(readme.includes(`## Writing a persona\n\n\`\`\`ts\n${snippet}\`\`\``), "README snippet and example differ");
      const mint = spawnSync(
        "bash",
        ["-c", "npm run --silent kpip -- token mint --persona alice --allow 'storage.*:obj://ws1/**' --ttl 1h > alice.token"],
        { cwd: dir, encoding: "utf8", env },
      );
      assert.equal(mint.status, 0, mint.stderr);
      const ex = fileURLToPath(new URL("../../../../examples/dist/readme-persona.js", import.meta.url));
      const run = spawnSync(process.execPath, [ex], { cwd: dir, encoding: "utf8", timeout: 60_000 });
      assert.equal(run.status, 0, run.stderr);
      assert.match(run.stdout, /read "hi" at generation \d+/);
    } finally {
      k.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
