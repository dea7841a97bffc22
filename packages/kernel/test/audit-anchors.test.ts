import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createPublicKey, generateKeyPairSync } from "node:crypto";
import {
  appendFileSync,
  chmodSync,
  chownSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { rawPublicKey, signBytes } from "@kpip/protocol";
import { AnchorFileError, type AuditAnchor, anchorLine, parseAnchors, verifyAnchors } from "../src/audit/anchors.js";
import { checkpointMessage } from "../src/audit/record.js";
import { verifyAudit } from "../src/audit/verify.js";
import { ConfigError } from "../src/config.js";
import { HOME_FILES, SqliteStore } from "../src/index.js";
import { tamperedStore } from "./audit-fill.js";
import { removeHome, startKernel } from "./harness.js";

/** A kernel given `path` as its anchor file refuses to start, a ConfigError naming auditAnchorFile and `why`. */
async function startRefused(path: string, why: RegExp): Promise<void> {
  const h = mkdtempSync(join(tmpdir(), "kpip-"));
  await assert.rejects(
    startKernel({ auditAnchorFile: path, auditCheckpointEvery: 10 }, h),
    (e: unknown) => e instanceof ConfigError && /auditAnchorFile/.test(e.message) && why.test(e.message),
    path,
  );
  removeHome(h);
}

describe("audit anchors: signed checkpoints kept outside the home", () => {
  const outside = mkdtempSync(join(tmpdir(), "kpip-anchors-"));
  const file = join(outside, "anchors.jsonl");
  let home = "";
  let anchors: AuditAnchor[] = [];
  const open = () => new SqliteStore(join(home, HOME_FILES.database));

  before(async () => {
    const t = await startKernel({ auditAnchorFile: file, auditCheckpointEvery: 10 });
    home = t.home;
    const admin = await t.admin();
    for (let i = 0; i < 60; i++) await admin.call("system.health", "kernel://");
    await t.stop();
    anchors = parseAnchors(readFileSync(file, "utf8")).anchors;
  });
  after(() => {
    removeHome(home);
    rmSync(outside, { recursive: true, force: true });
  });

  it("appends every signed checkpoint, 0600, and they match the log", () => {
    assert.equal(statSync(file).mode & 0o777, 0o600);
    const store = open();
    try {
      const cps = store.checkpoints();
      assert.ok(cps.length >= 6, `checkpoints: ${cps.length}`);
      assert.deepEqual(
        anchors.map((a) => a.seq),
        cps.map((c) => c.seq),
      );
      assert.equal(verifyAudit(store).ok, true);
      assert.deepEqual(verifyAnchors(store, anchors), { ok: true, anchors: anchors.length });
    } finally {
      store.close();
    }
  });

  it("a tail cut off together with its checkpoints passes the chain check, and fails against the anchors", () => {
    const copy = mkdtempSync(join(tmpdir(), "kpip-cut-"));
    const db = join(copy, "kernel.db");
    const src = open();
    src.db.exec(`VACUUM INTO '${db}'`);
    src.close();
    cpSync(join(home, HOME_FILES.auditSegments), join(copy, HOME_FILES.auditSegments), { recursive: true });
    const cut = (anchors.at(-3)?.seq ?? 0) - 3;
    // Cut as rows, then moved back into segment files: the copy's segments end at `cut`.
    const store = tamperedStore(db, (t) => {
      t.db.prepare("DELETE FROM audit WHERE seq > ?").run(cut);
      t.db.prepare("DELETE FROM audit_checkpoints WHERE seq > ?").run(cut);
    });
    try {
      assert.equal(verifyAudit(store).ok, true, "on its own, a clean cut is indistinguishable from a shorter log");
      const r = verifyAnchors(store, anchors);
      assert.equal(r.ok, false);
      assert.equal(r.firstBad?.seq, anchors.at(-3)?.seq);
      assert.match(r.firstBad?.reason ?? "", /missing \(log truncated\)/);
    } finally {
      store.close();
      rmSync(copy, { recursive: true, force: true });
    }
  });

  it("refuses an anchor that was edited, signed by another key, or names a record with another hash", () => {
    const store = open();
    try {
      const a = anchors[1] as AuditAnchor;
      const edited = { ...a, hash: Buffer.alloc(32, 7) };
      assert.match(verifyAnchors(store, [edited]).firstBad?.reason ?? "", /signature is invalid/);

      const other = generateKeyPairSync("ed25519").privateKey;
      const forged = {
        ...edited,
        publicKey: rawPublicKey(createPublicKey(other)),
        signature: signBytes(other, checkpointMessage(edited)),
      };
      assert.match(verifyAnchors(store, [forged]).firstBad?.reason ?? "", /key other than the kernel's/);
      // A forger who also holds the key the verifier trusts still cannot make the log match.
      assert.match(verifyAnchors(store, [forged], forged.publicKey).firstBad?.reason ?? "", /differs from its anchor/);
    } finally {
      store.close();
    }
  });

  it("parses its own lines back, and refuses malformed ones with their line number", () => {
    const a = anchors[0] as AuditAnchor;
    assert.deepEqual(parseAnchors(`\n${anchorLine(a)}\n`), { anchors: [a], tornTail: false });
    // A last line cut short by a crash mid-append is left out, and said so.
    assert.deepEqual(parseAnchors(`${anchorLine(a)}${anchorLine(a).slice(0, 40)}`), { anchors: [a], tornTail: true });
    const good = JSON.parse(anchorLine(a)) as Record<string, unknown>;
    const bad: [string, string][] = [
      ["not json", "nope"],
      ["an array", "[]"],
      ["no kernel", JSON.stringify({ ...good, kernel: undefined })],
      ["seq 0", JSON.stringify({ ...good, seq: 0 })],
      ["seq a string", JSON.stringify({ ...good, seq: "5" })],
      ["short hash", JSON.stringify({ ...good, hash: "abcd" })],
      ["uppercase hex", JSON.stringify({ ...good, hash: (good.hash as string).toUpperCase() })],
      ["short signature", JSON.stringify({ ...good, signature: (good.signature as string).slice(2) })],
    ];
    for (const [name, line] of bad) {
      assert.throws(
        () => parseAnchors(`${anchorLine(a)}${line}\n`),
        (e: unknown) => e instanceof AnchorFileError && e.line === 2,
        name,
      );
    }
  });

  it("a kernel restarted after a crash mid-append cuts the torn line off and goes on appending", async () => {
    appendFileSync(file, anchorLine(anchors[0] as AuditAnchor).slice(0, 50));
    const t = await startKernel({ auditAnchorFile: file, auditCheckpointEvery: 10 }, home);
    const admin = await t.admin();
    for (let i = 0; i < 15; i++) await admin.call("system.health", "kernel://");
    await t.stop();
    const after = parseAnchors(readFileSync(file, "utf8"));
    assert.equal(after.tornTail, false);
    assert.ok(after.anchors.length > anchors.length);
    const store = open();
    try {
      assert.deepEqual(verifyAnchors(store, after.anchors), { ok: true, anchors: after.anchors.length });
    } finally {
      store.close();
    }
  });

  it("a kernel whose anchor file cannot be opened does not start", async () => {
    const h = mkdtempSync(join(tmpdir(), "kpip-"));
    await assert.rejects(
      startKernel({ auditAnchorFile: join(outside, "no-such-dir", "anchors.jsonl") }, h),
      (e: unknown) => e instanceof ConfigError && /auditAnchorFile/.test(e.message),
    );
    removeHome(h);
  });

  it("a link, a FIFO or another user's file planted at the anchor path (a directory others can write) is refused at start: the file it names is neither cut nor appended to", async () => {
    const shared = mkdtempSync(join(tmpdir(), "kpip-anchors-shared-"));
    // A file of the kernel's user elsewhere whose last line has no newline (the torn-tail repair cut such files).
    const victim = join(shared, "victim");
    const precious = "line one\nbinary tail without a newline";
    writeFileSync(victim, precious);
    const link = join(shared, "via-link.jsonl");
    symlinkSync(victim, link);
    const fifo = join(shared, "fifo.jsonl");
    execFileSync("mkfifo", [fifo]);
    const theirs = join(shared, "theirs.jsonl");
    writeFileSync(theirs, "");
    const cases: [string, RegExp][] = [
      [link, /symbolic link/],
      [fifo, /not a regular file/],
    ];
    const me = process.getuid?.();
    // Another user's file: only root can make one here.
    if (me === 0) {
      chownSync(theirs, 65534, 65534);
      cases.push([theirs, /belongs to uid 65534/]);
    }
    for (const [path, why] of cases) await startRefused(path, why);
    assert.equal(readFileSync(victim, "utf8"), precious, "the link's target is untouched");
    assert.equal(readFileSync(theirs, "utf8"), "");
    rmSync(shared, { recursive: true, force: true });
  });

  it("an anchor file below a directory others may write (no sticky bit) or another user owns is refused at start: they could move it away and put theirs in its place", async () => {
    const above = mkdtempSync(join(tmpdir(), "kpip-anchors-above-"));
    const refused = async (path: string, why: RegExp) => {
      await startRefused(path, why);
      assert.ok(!existsSync(path), "no anchor file made there");
    };
    try {
      mkdirSync(join(above, "sub"), { mode: 0o700 });
      chmodSync(above, 0o777);
      // Its own directory, or one further up.
      await refused(join(above, "anchors.jsonl"), /writable by group or others \(mode 777\) without the sticky bit/);
      await refused(join(above, "sub", "anchors.jsonl"), new RegExp(`${above}, above the anchor file`));
      // Sticky, as /tmp: others cannot move what is not theirs.
      chmodSync(above, 0o1777);
      const t = await startKernel({ auditAnchorFile: join(above, "sub", "anchors.jsonl"), auditCheckpointEvery: 10 });
      await t.stop();
      removeHome(t.home);
      if (process.getuid?.() === 0) {
        chmodSync(above, 0o755);
        chownSync(above, 65534, 65534);
        await refused(join(above, "other.jsonl"), /belongs to uid 65534/);
      }
    } finally {
      rmSync(above, { recursive: true, force: true });
    }
  });
});
