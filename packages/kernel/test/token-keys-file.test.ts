import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { pino } from "pino";
import { ROOT_KEYS_FILE } from "../src/index.js";
import { klass, removeHome, startKernel, type TestKernel } from "./harness.js";

const storageWs1 = [{ ops: ["storage.read", "storage.write"], targets: ["obj://ws1/**"] }];

describe("the token key file, damaged while the kernel runs", () => {
  let now = Date.now();
  const lines: { level: number; msg: string }[] = [];
  let t: TestKernel;
  before(async () => {
    const logger = pino({ level: "info" }, { write: (s: string) => lines.push(JSON.parse(s)) });
    t = await startKernel({ clock: () => now, logger });
  });
  after(async () => {
    await t.stop();
    removeHome(t.home);
  });

  it("a token key file that turns into bad JSON or a FIFO is reported once, escaped, and no token verifies nor is minted until it is mended", async () => {
    const path = join(t.home, ROOT_KEYS_FILE);
    const good = readFileSync(path, "utf8");
    const a = await t.persona("kay", storageWs1);
    const c = await t.connect(a.identity, []);
    await c.storage.write("obj://ws1/k", "before", { caps: [a.token] });
    const errors = () => lines.filter((l) => l.level >= 50 && /token key file/.test(l.msg));

    writeFileSync(path, '{"current": "\u009b2J\u202e', { mode: 0o600 });
    now += 1100; // the kernel re-reads the key file at most once a second, by its clock
    // The damaged file may have retired the key: nothing is honoured on the strength of the old read.
    await assert.rejects(c.storage.write("obj://ws1/k", "while damaged", { caps: [a.token] }), klass("CAPABILITY"));
    await assert.rejects(t.persona("kay2", storageWs1));
    assert.equal(errors().length, 1, JSON.stringify(lines));
    assert.match(errors()[0]?.msg ?? "", /token key file .*token-keys\.json is not JSON/);
    assert.doesNotMatch(errors()[0]?.msg ?? "", /[\u0080-\u009f\u202a-\u202e]/, "no raw C1 control nor bidi override");
    now += 1100;
    await assert.rejects(c.storage.read("obj://ws1/k", { caps: [a.token] }), klass("CAPABILITY"));
    assert.equal(errors().length, 1, "reported once, not at every re-read");

    // A FIFO would have blocked the kernel's thread for ever in the read.
    unlinkSync(path);
    execFileSync("mkfifo", ["-m", "600", path]);
    now += 1100;
    await assert.rejects(c.storage.write("obj://ws1/k", "while a fifo", { caps: [a.token] }), klass("CAPABILITY"));
    assert.equal(errors().length, 2);
    assert.match(errors()[1]?.msg ?? "", /not a regular file/);

    unlinkSync(path);
    writeFileSync(path, good, { mode: 0o600 });
    now += 1100;
    await c.storage.write("obj://ws1/k", "mended", { caps: [a.token] });
    await t.persona("kay3", storageWs1);
    assert.equal(errors().length, 2);
  });
});
