import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { kpip, runKernel } from "./run.js";

// The CLI as an operator (often root) runs it on what a persona or a local user shaped: files
// handed over, paths in shared directories, a token's caveats, a home someone touched.
describe("kpip on hostile input, with the CLI as a real process against a real kernel", () => {
  const home = mkdtempSync(join(tmpdir(), "kpip-hostile-"));
  const work = mkdtempSync(join(tmpdir(), "kpip-hostile-work-"));
  const h = ["--home", home];
  let kernel: ChildProcess;
  before(async () => {
    kernel = await runKernel(home);
  });
  after(async () => {
    const exited = new Promise((r) => kernel.once("exit", r));
    kernel.kill("SIGTERM");
    await exited;
    rmSync(home, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  });

  it("call --out writes a new file, 0600, never through a link a local user planted nor over an existing file", () => {
    assert.equal(kpip(["call", "storage.write", "obj://ws1/secret", "--data", "the persona's secret", ...h]).code, 0);
    const victim = join(work, "victim");
    writeFileSync(victim, "the operator's file\n");
    const planted = join(work, "planted");
    symlinkSync(victim, planted);
    const viaLink = kpip(["call", "storage.read", "obj://ws1/secret", "-o", planted, ...h]);
    assert.equal(viaLink.code, 2, viaLink.out + viaLink.err);
    assert.match(viaLink.err, /exists; --out writes a new file/);
    assert.equal(readFileSync(victim, "utf8"), "the operator's file\n", "the link's target is untouched");
    // A link to nowhere (which existsSync does not see) is refused by the open itself.
    const dangling = join(work, "dangling");
    symlinkSync(join(work, "not-yet"), dangling);
    const viaDangling = kpip(["call", "storage.read", "obj://ws1/secret", "-o", dangling, ...h]);
    assert.equal(viaDangling.code, 2, viaDangling.out + viaDangling.err);
    assert.throws(() => statSync(join(work, "not-yet")), /ENOENT/);
    const fresh = join(work, "fresh");
    const ok = kpip(["call", "storage.read", "obj://ws1/secret", "-o", fresh, ...h]);
    assert.equal(ok.code, 0, ok.err);
    assert.equal(readFileSync(fresh, "utf8"), "the persona's secret");
    assert.equal(statSync(fresh).mode & 0o777, 0o600, "no group or other access, whatever the umask");
  });
});
