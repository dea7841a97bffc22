import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import {
  chmodSync,
  copyFileSync,
  cpSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  truncateSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { KernelClient, loadIdentity } from "@kpip/client";
import { AuditLog, type AuditRow, Kernel, openAuditReader, recordBytes, SqliteStore } from "@kpip/kernel";
import { attenuate, decodeToken, derivedTokenId, encodeToken, generateIdentity } from "@kpip/protocol";
import { CommandWorker } from "@kpip/protocol/testing";
import Database from "better-sqlite3";
import { globMatcher, parseSeqRange, parseTime, patternTest, recordTokenIds } from "../src/audit/filters.js";
import { PAIR_LOOKBACK, timeline } from "../src/audit/timeline.js";
import { type TokenNode, treeDot } from "../src/audit/tokens.js";
import { hashTree } from "./evidence.js";
import { connectAdmin, DISPATCH } from "./run.js";

const MAIN = fileURLToPath(new URL("../src/main.js", import.meta.url));
// Most runs here are short (a refusal, a page of records): one worker thread runs them all, not a
// process each. Those that need a process (tail -f's signal, a hang guard, TMPDIR) spawn MAIN.
const cli = new CommandWorker(DISPATCH);
after(() => cli.close());
const kpip = (args: string[]) => cli.run(args);

describe("audit tool arguments", () => {
  it("parses --seq ranges, times and globs, and refuses what they are not", () => {
    assert.deepEqual(parseSeqRange("3..9"), { from: 3, to: 9 });
    assert.deepEqual(parseSeqRange("7"), { from: 7, to: 7 });
    assert.deepEqual(parseSeqRange("..4"), { from: 1, to: 4 });
    assert.equal(parseSeqRange("5..").to, Number.MAX_SAFE_INTEGER);
    for (const bad of ["9..3", "0..2", "..", "", "a..b", "1...2", "-1", "1..2..3", "99999999999999999999"]) {
      assert.throws(() => parseSeqRange(bad), /--seq must be/, bad);
    }
    assert.equal(parseTime("2026-01-31T12:00:00Z", "--since"), Date.UTC(2026, 0, 31, 12));
    assert.equal(parseTime("10m", "--since", 1_000_000), 400_000);
    assert.equal(parseTime("2026-01-31 12:00", "--since"), Date.UTC(2026, 0, 31, 12), "no zone: UTC");
    assert.equal(parseTime("2026-01-31T12:00:00+02:00", "--since"), Date.UTC(2026, 0, 31, 10));
    assert.equal(parseTime("2026-01-31", "--since"), Date.UTC(2026, 0, 31));
    for (const bad of ["yesterday", "1", "10x", "2026-13-45", "March 3"])
      assert.throws(() => parseTime(bad, "--until"), /--until must be/);
    const sub = globMatcher("alice/**", "/");
    assert.ok(sub("alice") && sub("alice/worker") && sub("alice/a/b"));
    assert.ok(!sub("alicex") && !sub("bob/alice"));
    const family = globMatcher("storage.*", ".");
    assert.ok(family("storage.read") && !family("storage") && !family("storagex.read") && !family("token.mint"));
    const target = globMatcher("obj://proj/", "/", true);
    assert.ok(target("obj://proj/a/b") && !target("obj://projx/a"));
    const one = globMatcher("obj://proj/*", "/", true);
    assert.ok(one("obj://proj/a") && !one("obj://proj/a/b"));
  });

  it("query's --persona/--op test (records are decoded, not filtered in SQL) answers as SQLite's GLOB whenever the pattern has a wildcard (* ? [), as the name otherwise", () => {
    // The filter it replaces: exact, or GLOB with ** as *, and P/** also P itself; GLOB as soon
    // as the pattern has a character GLOB gives a meaning (`?` and `[` too, not only `*`).
    const db = new Database(":memory:");
    const sql = (pattern: string, v: string): boolean => {
      if (!/[*?[]/.test(pattern)) return v === pattern;
      const glob = pattern.replace(/\*\*/g, "*");
      const hit = (db.prepare("SELECT ? GLOB ? AS m").get(v, glob) as { m: number }).m === 1;
      return hit || (pattern.endsWith("/**") && v === pattern.slice(0, -3));
    };
    const patterns = [
      "alice",
      "alice/**",
      "storage.*",
      "*.mint",
      "a?c*",
      "x*y",
      "[ab]*",
      "é/*",
      "a.b*",
      "a*[b",
      "a?c",
      "[ab]z",
      "alic?",
      "x[/]y",
      "[ab",
    ];
    const values = [
      "alice",
      "alice/w",
      "alice/a/b",
      "alicex",
      "storage.read",
      "storage",
      "token.mint",
      "abc",
      "aXcd",
      "xy",
      "x/y",
      "bz",
      "é/1",
      "a.bc",
      "aXbc",
      "",
    ];
    for (const p of patterns) {
      const t = patternTest(p);
      for (const v of values) assert.equal(t(v), sql(p, v), `${p} on ${JSON.stringify(v)}`);
      assert.equal(t(null), false);
    }
    db.close();
  });
});

/** Starts a kernel on `home`, runs `f` as its admin, and stops it. */
async function asAdmin(home: string, f: (c: KernelClient) => Promise<void>): Promise<void> {
  const k = new Kernel({ home, logLevel: "silent" });
  await k.start();
  try {
    const c = await connectAdmin(home);
    try {
      await f(c);
    } finally {
      await c.close();
    }
  } finally {
    await k.stop();
  }
}

describe("kpip audit timeline --token", () => {
  it("a prefix naming two tokens is refused, naming them: a persona grinds a token attenuated offline until its id begins as another's", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-audit-prefix-"));
    try {
      let victim = "";
      let ground = "";
      await asAdmin(home, async (c) => {
        const rights = [{ ops: ["system.*"], targets: ["kernel://"] }];
        const a = await c.tokens.mint("admin", { rights, ttlMs: 3_600_000 });
        const b = decodeToken((await c.tokens.mint("admin", { rights, ttlMs: 3_600_000 })).token);
        victim = a.id;
        // Offline, at no cost to the kernel: an exp caveat per try, until the id's first 4 hex digits match (~65,536 tries).
        let d = b;
        for (let i = 1; derivedTokenId(d).slice(0, 4) !== victim.slice(0, 4); i++)
          d = attenuate(b, { t: "exp", v: b.claims.exp - i });
        ground = derivedTokenId(d);
        await c.call("system.health", "kernel://", {}, { caps: [a.token] });
        await c.call("system.health", "kernel://", {}, { caps: [encodeToken(d)] });
      });
      const short = victim.slice(0, 4);
      const r = await kpip(["audit", "timeline", "--home", home, "--token", short]);
      assert.equal(r.code, 2, r.out);
      assert.match(
        r.err,
        new RegExp(`--token ${short} names 2 tokens \\((${victim}, ${ground}|${ground}, ${victim})\\): give more of the id`),
      );
      for (const id of [victim, ground]) {
        const one = await kpip(["audit", "timeline", "--home", home, "--token", id, "--json"]);
        assert.equal(one.code, 0, one.err);
        const rows = one.out
          .trim()
          .split("\n")
          .map((l) => JSON.parse(l) as { op: string; tokens: string[] });
        // The ground one's first use is on the record too (token.derived, about it).
        assert.deepEqual(
          rows.filter((x) => x.op === "system.health").map((x) => x.tokens),
          [[id]],
        );
      }
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});

describe("kpip audit timeline --token, text a persona chose", () => {
  it("lists no row of another persona's under a token only because its text names that token: a caveat of its own token, a forged token's claimed id", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-audit-named-"));
    try {
      let victim = "";
      await asAdmin(home, async (c) => {
        const rights = [{ ops: ["system.*"], targets: ["kernel://"] }];
        const v = await c.tokens.mint("admin", { rights, ttlMs: 3_600_000 });
        victim = v.id;
        await c.call("system.health", "kernel://", {}, { caps: [v.token] });
        const mallory = generateIdentity("mallory");
        await c.personas.register("mallory", mallory.publicKey);
        const own = await c.tokens.mint("mallory", { rights, ttlMs: 3_600_000 });
        // Its own token narrowed offline with a domains caveat that is the victim's token id (any text of up to 128 characters)...
        const named = encodeToken(attenuate(decodeToken(own.token), { t: "domains", v: [victim] }));
        // ...and the victim's token with a byte of its signature flipped: it only claims the victim's id.
        const forged = Buffer.from(v.token);
        forged[forged.length - 1] = (forged[forged.length - 1] as number) ^ 1;
        const socket = join(home, "kernel.sock");
        const m = await KernelClient.connect({ socket, identity: mallory, tokens: [named, forged], reconnect: false });
        try {
          await m.call("system.health", "kernel://", {}, { domain: victim });
        } finally {
          await m.close();
        }
      });
      const rows = (await kpip(["audit", "timeline", "--home", home, "--token", victim, "--json"])).out
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as { persona: string; op: string; tokens: string[] });
      assert.ok(
        rows.some((r) => r.persona === "admin" && r.op === "system.health"),
        "the victim token's own use is listed",
      );
      assert.deepEqual(
        rows.filter((r) => r.persona === "mallory").map((r) => r.op),
        [],
        "mallory's session and the first use of her derived token are not listed under the victim's token",
      );
      // Her rows are still on the record, under her own token.
      const all = (await kpip(["audit", "timeline", "--home", home, "--persona", "mallory", "--json"])).out.trim().split("\n");
      assert.ok(all.some((l) => (JSON.parse(l) as { op: string }).op === "token.derived"));
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});

describe("kpip audit tail -f", () => {
  const home = mkdtempSync(join(tmpdir(), "kpip-audit-tail-"));
  after(() => rmSync(home, { recursive: true, force: true }));

  it("prints every record appended while it follows, once and in order, however many land between two looks", async () => {
    const k = new Kernel({ home, logLevel: "silent" });
    await k.start();
    const child = spawn(process.execPath, [MAIN, "audit", "tail", "-f", "-n", "1", "--json", "--home", home], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
    });
    // Whole lines only: a read can end in the middle of one.
    const seqs = () =>
      out
        .slice(0, out.lastIndexOf("\n") + 1)
        .split("\n")
        .filter(Boolean)
        .map((l) => (JSON.parse(l) as { seq: number }).seq);
    try {
      // It prints the newest record first: from then on it follows.
      for (let i = 0; i < 600 && seqs().length === 0; i++) await new Promise((r) => setTimeout(r, 50));
      const first = seqs()[0] as number;
      assert.ok(first > 0, "tail printed the newest record");
      const c = await connectAdmin(home);
      // Thousands of records between two of its looks (it looks every 250 ms), at 64 in flight.
      let left = 3000;
      await Promise.all(
        Array.from({ length: 64 }, async () => {
          while (left-- > 0) await c.call("system.health", "kernel://");
        }),
      );
      await c.close();
      const head = (JSON.parse((await kpip(["audit", "verify", "--json", "--home", home])).out) as { head: { seq: number } }).head
        .seq;
      assert.ok(head >= first + 3000, `head ${head}`);
      for (let i = 0; i < 1200 && (seqs().at(-1) ?? 0) < head; i++) await new Promise((r) => setTimeout(r, 50));
      const got = seqs();
      assert.ok((got.at(-1) ?? 0) >= head, `it caught up with the head (${got.at(-1)} < ${head})`);
      assert.deepEqual(
        got,
        Array.from({ length: got.length }, (_, i) => first + i),
        "every record once, in order",
      );
    } finally {
      child.kill("SIGINT");
      await new Promise((r) => child.once("exit", r));
      await k.stop();
    }
  });
});

describe("audit views print what a peer chose, never raw control characters", () => {
  const home = mkdtempSync(join(tmpdir(), "kpip-audit-ctl-"));
  after(() => rmSync(home, { recursive: true, force: true }));

  it("query, timeline and show escape C1 and bidirectional formatting characters a refused argument name carried into the record", async () => {
    await asAdmin(home, async (c) => {
      // An argument name is the peer's text; the refusal quotes it (JSON escapes C0, not these).
      const name = "evil\u202etxt\u009b31m\u0085forged";
      await assert.rejects(c.call("storage.write", "obj://ws/x", { data: new Uint8Array(1), [name]: 1 }));
    });
    const unprintable = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/;
    const q = await kpip(["audit", "query", "--home", home, "--op", "storage.write"]);
    assert.equal(q.code, 0, q.err);
    assert.match(q.out, /evil\\u\{202e\}txt\\u\{9b\}31m\\u\{85\}forged/, q.out);
    const seq = Number(/^\s*(\d+) .*evil/m.exec(q.out)?.[1]);
    for (const out of [
      q.out,
      (await kpip(["audit", "show", String(seq), "--home", home])).out,
      (await kpip(["audit", "timeline", "--home", home])).out,
    ]) {
      assert.ok(!unprintable.test(out), `raw control character in: ${JSON.stringify(out)}`);
    }
    // --json keeps the record's text exactly (escaped by JSON where JSON escapes).
    const j = await kpip(["audit", "query", "--home", home, "--op", "storage.write", "--json"]);
    assert.ok(j.out.includes("evil\u202etxt\u009b31m\u0085forged"));
  });

  it("show prints a persona's map with a $hex or $text key as the map it is: it cannot pass for bytes, hide its other keys, forge a line or reach the terminal", async () => {
    const forged = "\n  persona      forged\n\u001b]0;owned\u0007\u202e";
    await asAdmin(home, async (c) => {
      const data = { a: { $hex: forged, hiddenA: 1 }, b: { $text: "harmless", hiddenB: "rm -rf /" }, c: [{ $hex: "00" }] };
      await c.call("event.emit", "topic://audit-ctl/x", { data });
    });
    const q = await kpip(["audit", "query", "--home", home, "--op", "event.emit", "--json"]);
    const seq = (JSON.parse(q.out.trim().split("\n")[0] as string) as { seq: number }).seq;
    const s = await kpip(["audit", "show", String(seq), "--home", home]);
    assert.equal(s.code, 0, s.err);
    const unprintable = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/;
    assert.ok(!unprintable.test(s.out), `raw control character in: ${JSON.stringify(s.out)}`);
    assert.ok(!/^\s*persona\s+forged$/m.test(s.out), `a forged line:\n${s.out}`);
    assert.ok(!/bytes hex/.test(s.out), `a persona's map shown as bytes:\n${s.out}`);
    for (const k of ["hiddenA: 1", 'hiddenB: "rm -rf /"', '$text: "harmless"', '$hex: "\\n  persona', '$hex: "00"'])
      assert.ok(s.out.includes(k), `${k} not shown:\n${s.out}`);
    // --json tells the map from bytes too: a key starting with "$" is written with one more.
    const j = JSON.parse((await kpip(["audit", "show", String(seq), "--home", home, "--json"])).out) as {
      intent: { args: { data: Record<string, unknown> } };
    };
    assert.deepEqual(j.intent.args.data, {
      a: { $$hex: forged, hiddenA: 1 },
      b: { $$text: "harmless", hiddenB: "rm -rf /" },
      c: [{ $$hex: "00" }],
    });
  });
});

describe("audit tools on a home", () => {
  const home = mkdtempSync(join(tmpdir(), "kpip-audit-tools-"));
  const h = ["--home", home];
  let head = 0;

  before(async () => {
    await asAdmin(home, async (c) => {
      for (let i = 0; i < 5; i++) await c.storage.write(`obj://ws/${i}`, new TextEncoder().encode(`v${i}`));
    });
    head = JSON.parse((await kpip(["audit", "verify", "--json", ...h])).out).head.seq;
  });
  after(() => rmSync(home, { recursive: true, force: true }));

  it("pages the timeline and says how many rows are left and where the next page starts", async () => {
    const first = await kpip(["audit", "timeline", "--json", "--limit", "2", ...h]);
    assert.equal(first.code, 0, first.err);
    const rows = first.out
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    assert.equal(rows.length, 2);
    const page = JSON.parse(first.err.trim()).page;
    assert.equal(page.shown, 2);
    assert.ok(page.more > 0);
    assert.equal(page.next, rows[1].seq);
    const rest = await kpip(["audit", "timeline", "--json", "--limit", "1000", "--after", String(page.next), ...h]);
    assert.equal(rest.out.trim().split("\n").length, page.more);
    assert.deepEqual(JSON.parse(rest.err.trim()).page, { shown: page.more, more: 0, next: null });
    const text = await kpip(["audit", "timeline", "--limit", "1", ...h]);
    assert.match(
      text.err,
      new RegExp(`^1 rows shown; ${page.more + 1} more match: the same command with --after ${rows[0].seq}`),
    );
    const range = await kpip(["audit", "timeline", "--json", "--seq", `2..${head}`, "--op", "storage.write", ...h]);
    const writes = range.out
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    assert.equal(writes.length, 5);
    assert.ok(writes.every((r) => r.seq >= 2 && r.outcomeSeq === r.seq + 1));
  });

  it("query says how many matching records it left out, and gives times in UTC", async () => {
    const q = await kpip(["audit", "query", "--limit", "2", ...h]);
    assert.equal(q.code, 0, q.err);
    assert.match(q.out, /time \(UTC\)/);
    assert.match(q.out.split("\n")[1] as string, /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z /);
    assert.match(q.err, new RegExp(`^the newest 2 of ${head} matching records shown; ${head - 2} older left out`));
    const j = await kpip(["audit", "query", "--json", "--op", "storage.*", ...h]);
    assert.equal(j.out.trim().split("\n").length, 10, "intent and outcome of five writes");
    assert.deepEqual(JSON.parse(j.err.trim()).page, { shown: 10, more: 0, newest: true, before: null });
  });

  it("reads a read-only copy whose -wal holds records the database file does not, and changes no file", async () => {
    // Records head-2..head are moved into the WAL: deleted and checkpointed into the database
    // file, then put back by a connection that stays open, so the -wal holds them unmerged.
    // (The index of the segment files: the records' bytes are in the segments, their spans in SQLite.)
    const db = new Database(join(home, "kernel.db"));
    db.pragma("wal_autocheckpoint = 0");
    const tail = db.prepare("SELECT * FROM audit_batches WHERE last_seq > ? ORDER BY first_seq").all(head - 3) as Record<
      string,
      unknown
    >[];
    db.prepare("DELETE FROM audit_batches WHERE last_seq > ?").run(head - 3);
    db.pragma("wal_checkpoint(TRUNCATE)");
    const cols = Object.keys(tail[0] as object);
    const ins = db.prepare(`INSERT INTO audit_batches (${cols.join(",")}) VALUES (${cols.map(() => "?").join(",")})`);
    db.transaction(() => {
      for (const r of tail) ins.run(...cols.map((c) => r[c]));
    })();
    const evidence = join(mkdtempSync(join(tmpdir(), "kpip-wal-evidence-")), "home");
    cpSync(home, evidence, { recursive: true });
    db.close();
    const fileOnly = mkdtempSync(join(tmpdir(), "kpip-wal-fileonly-"));
    copyFileSync(join(evidence, "kernel.db"), join(fileOnly, "kernel.db"));
    const plain = new Database(join(fileOnly, "kernel.db"), { readonly: true });
    assert.ok(
      (plain.prepare("SELECT max(last_seq) AS s FROM audit_batches").get() as { s: number }).s <= head - 3,
      "the file alone lacks them",
    );
    plain.close();
    rmSync(fileOnly, { recursive: true, force: true });
    const segments = join(evidence, "audit");
    for (const f of readdirSync(segments)) chmodSync(join(segments, f), 0o400);
    for (const f of readdirSync(evidence)) chmodSync(join(evidence, f), f === "audit" ? 0o500 : 0o400);
    chmodSync(evidence, 0o500);
    try {
      const files = hashTree(evidence);
      assert.ok(files.has(join(evidence, "kernel.db-wal")));
      const on = (args: string[]) => kpip([...args, "--home", evidence]);
      const v = await on(["audit", "verify", "--json"]);
      assert.equal(v.code, 0, v.out);
      assert.equal(JSON.parse(v.out).head.seq, head);
      const last = await on(["audit", "timeline", "--json", "--seq", `${head - 2}..`]);
      assert.ok(last.out.trim().split("\n").length >= 1);
      assert.equal((await on(["audit", "tail", "-n", "1", "--json"])).out.includes(`"seq":${head}`), true);
      assert.equal((await on(["audit", "show", String(head)])).code, 0);
      assert.equal((await on(["audit", "tokens"])).code, 0);
      assert.equal((await on(["audit", "query", "--since", "1h"])).code, 0);
      assert.deepEqual(hashTree(evidence), files, "no file of the home was created or changed");
    } finally {
      chmodSync(evidence, 0o700);
      chmodSync(segments, 0o700);
      rmSync(join(evidence, ".."), { recursive: true, force: true });
    }
  });

  it("shows the detail column when the home has it: the kernel's acts, derived tokens, what a revocation ended", async () => {
    // A copy of the home with records of the shapes the kernel writes in it (their bytes as
    // the kernel encodes them; the hashes are not the chain's: verify is not the point here).
    const dir = mkdtempSync(join(tmpdir(), "kpip-detail-"));
    try {
      copyFileSync(join(home, "kernel.db"), join(dir, "kernel.db"));
      cpSync(join(home, "audit"), join(dir, "audit"), { recursive: true });
      // Appended as a kernel appends (its segment files), the records as given.
      const store = new SqliteStore(join(dir, "kernel.db"));
      store.useAuditSegments(join(dir, "audit"));
      const db = store.db;
      const root = (db.prepare("SELECT id FROM tokens WHERE minted_by = 'kernel'").get() as { id: string }).id;
      const derived = "d".repeat(32);
      const now = Date.now();
      let seq = head;
      const fields = ["requestId", "op", "target", "intentHash", "intent", "caps", "status", "errorClass", "message"];
      const add = (r: Record<string, unknown>) => {
        const row = {
          ...Object.fromEntries(
            [...fields, "durationUs", "traceparent", "execution", "domain", "measurements", "detail"].map((f) => [f, null]),
          ),
          seq: ++seq,
          time: now + seq,
          kernel: "k-1",
          session: "kernel",
          persona: "-",
          phase: "kernel",
          prevHash: Buffer.alloc(32),
          ...r,
        } as unknown as Parameters<typeof recordBytes>[0];
        store.appendAudit([{ seq, hash: Buffer.alloc(32, seq), record: recordBytes(row) } as unknown as AuditRow]);
        return seq;
      };
      add({
        op: "kernel.start",
        target: "kernel://",
        status: "SUCCESS",
        detail: '{"configDigest":"ab","reason":"start","sandbox":"none","version":"0.1.0"}',
      });
      const token = {
        caveats: [{ t: "ops", v: ["storage.read"] }],
        exp: now + 3_600_000,
        id: derived,
        parent: root,
        rights: [["storage.read", "obj://ws/**"]],
        sub: "admin",
      };
      add({
        op: "token.derived",
        target: `token://${derived}`,
        persona: "admin",
        session: "s-1",
        detail: JSON.stringify({ token }),
      });
      add({
        op: "op.state",
        target: "op://abc",
        persona: "admin",
        session: "s-1",
        detail: '{"from":"running","op":"abc","state":"cancelled"}',
      });
      const ih = Buffer.alloc(32, 7);
      const common = {
        op: "token.revoke",
        target: `token://${root}`,
        persona: "admin",
        session: "s-2",
        requestId: 9,
        intentHash: ih,
        caps: `h1:${root}`,
      };
      const intentSeq = add({ ...common, phase: "intent" });
      const outcomeSeq = add({
        ...common,
        phase: "outcome",
        status: "SUCCESS",
        detail: JSON.stringify({ ended: [root, derived], revoked: root, status: "SUCCESS" }),
      });
      // An agent's end revokes its token and the tokens minted for its persona id; a start, any left.
      const [agentToken, mintedForAgent, leftAtStart] = ["a1", "a2", "a3"].map((x) => x.padEnd(32, "0"));
      const agentEnd = add({
        op: "token.revoked",
        target: `token://${agentToken}`,
        persona: "eve/agent.w1",
        detail: JSON.stringify({ ended: [agentToken, mintedForAgent], mintedFor: [mintedForAgent], revoked: agentToken }),
      });
      const atStart = add({
        op: "token.revoked",
        target: "kernel://",
        persona: "kernel",
        detail: JSON.stringify({ ended: [leftAtStart], mintedFor: [leftAtStart] }),
      });
      store.close();
      const on = async (args: string[]) => {
        const r = await kpip([...args, "--home", dir, "--json"]);
        assert.equal(r.code, 0, r.err);
        return r.out
          .trim()
          .split("\n")
          .map((l) => JSON.parse(l));
      };
      const kernel = await on(["audit", "timeline", "--session", "kernel", "--op", "kernel.*"]);
      assert.deepEqual(kernel.at(-1).detail, { configDigest: "ab", reason: "start", sandbox: "none", version: "0.1.0" });
      assert.equal((await on(["audit", "timeline", "--target", "op://abc"]))[0].detail.state, "cancelled");
      const revoke = await on(["audit", "timeline", "--op", "token.revoke"]);
      assert.deepEqual(
        revoke.map((r) => [r.seq, r.outcomeSeq, r.detail.ended]),
        [[intentSeq, outcomeSeq, [root, derived]]],
      );
      assert.ok((await on(["audit", "timeline", "--token", derived])).some((r) => r.op === "token.derived"));
      const nodes = new Map((await on(["audit", "tokens"])).map((n) => [n.id, n]));
      const d = nodes.get(derived);
      assert.deepEqual(
        [d.how, d.parent, d.recordBy, d.rights, d.caveats],
        ["derived", root, "detail", token.rights, token.caveats],
      );
      assert.equal(d.endedBy, root);
      assert.equal(nodes.get(root).revoked.record, outcomeSeq);
      assert.deepEqual(nodes.get(root).revoked.ended, [root, derived]);
      assert.deepEqual(
        [agentToken, mintedForAgent, leftAtStart].map((id) => nodes.get(id)?.revoked?.record),
        [agentEnd, agentEnd, atStart],
        "a token the kernel revoked for an agent's persona is linked to the record that did",
      );
      assert.deepEqual((await on(["audit", "show", String(intentSeq)]))[0].outcomeRecord.detail.ended, [root, derived]);
      const text = (await kpip(["audit", "tokens", "--home", dir])).out;
      assert.match(text, new RegExp(`└─ ${derived}  for admin, derived by admin`));
      assert.match(text, /rights {2}storage\.read on obj:\/\/ws\/\*\*/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("refuses bad input with exit 2 (one JSON line under --json), and a home it cannot read with exit 1", async () => {
    const exists = join(home, "exists.bin");
    writeFileSync(exists, "x");
    const cases: [string, string[], number][] = [
      ["reversed --seq", ["timeline", "--seq", "9..3"], 2],
      ["--seq not a number", ["timeline", "--seq", "a..b"], 2],
      ["--seq zero", ["timeline", "--seq", "0"], 2],
      ["bad --since", ["timeline", "--since", "yesterdayish"], 2],
      ["bad --until", ["timeline", "--until", "2026-13-45"], 2],
      ["--until before --since", ["timeline", "--since", "2026-01-02T00:00:00Z", "--until", "2026-01-01T00:00:00Z"], 2],
      ["--limit 0", ["timeline", "--limit", "0"], 2],
      ["--after not a number", ["timeline", "--after", "x"], 2],
      ["empty --persona", ["timeline", "--persona", ""], 2],
      ["--target pattern over 4096 characters", ["timeline", "--target", `obj://${"*a".repeat(2046)}`], 2],
      ["--persona pattern over 4096 characters", ["timeline", "--persona", "a".repeat(4097)], 2],
      ["query --op pattern over 4096 characters", ["query", "--op", "?".repeat(4097)], 2],
      ["unknown flag", ["timeline", "--bogus"], 2],
      ["a flag of another subcommand", ["verify", "--seq", "1..2"], 2],
      ["extra argument", ["timeline", "now"], 2],
      ["unknown subcommand", ["timelime"], 2],
      ["show without a seq", ["show"], 2],
      ["show a non-number", ["show", "x1"], 2],
      ["show a record not in the log", ["show", "999999"], 2],
      ["--body without --raw", ["show", "1", "--body", "args.data"], 2],
      ["--raw of a record without an intent", ["show", "1", "--raw", join(home, "r.bin")], 2],
      ["--raw onto an existing file", ["show", "4", "--raw", exists], 2],
      ["--body not in the intent", ["show", "4", "--raw", join(home, "r2.bin"), "--body", "args.nope"], 2],
      ["bad --format", ["tokens", "--format", "svg"], 2],
      ["--token not an id", ["tokens", "--token", "xyz"], 2],
      ["--token unknown", ["tokens", "--token", "0".repeat(32)], 2],
      ["--max-unsigned 0", ["verify", "--max-unsigned", "0"], 2],
      ["query --limit -", ["query", "--limit", "many"], 2],
    ];
    for (const [what, args, code] of cases) {
      const j = await kpip(["audit", ...args, "--home", home, "--json"]);
      assert.equal(j.code, code, `${what}: ${j.out}${j.err}`);
      const out = j.out.trim().split("\n");
      assert.equal(out.length, 1, `${what}: one JSON line`);
      assert.equal(JSON.parse(out[0] as string).error, "UsageError", what);
    }
    // Without --json: the message and the usage hint on stderr (a process: the entry's own exit code).
    const p = spawnSync(process.execPath, [MAIN, "audit", "timeline", "--seq", "9..3", "--home", home], { encoding: "utf8" });
    const plain = { code: p.status, out: p.stdout, err: p.stderr };
    assert.equal(plain.code, 2);
    assert.equal(plain.out, "");
    assert.match(plain.err, /^kpip audit: --seq must be A\.\.B.*\nrun `kpip audit --help` for usage\n$/);

    const nowhere = join(home, "no-such-home");
    const notHome = mkdtempSync(join(tmpdir(), "kpip-not-a-home-"));
    const garbage = mkdtempSync(join(tmpdir(), "kpip-garbage-home-"));
    writeFileSync(join(garbage, "kernel.db"), Buffer.alloc(8192, 0x5a));
    const otherDb = mkdtempSync(join(tmpdir(), "kpip-other-db-"));
    new Database(join(otherDb, "kernel.db")).exec("CREATE TABLE t (x)").close();
    // A kernel database whose pages past the schema are overwritten: found when they are read.
    const damaged = mkdtempSync(join(tmpdir(), "kpip-damaged-home-"));
    copyFileSync(join(home, "kernel.db"), join(damaged, "kernel.db"));
    const size = readFileSync(join(damaged, "kernel.db")).length;
    writeFileSync(
      join(damaged, "kernel.db"),
      Buffer.concat([readFileSync(join(damaged, "kernel.db")).subarray(0, 8192), Buffer.alloc(size - 8192, 0xff)]),
    );
    const fileHome = join(home, "exists.bin");
    mkdirSync(join(notHome, "personas"));
    try {
      const homes = [
        [nowhere, 2],
        [fileHome, 2],
        [notHome, 2],
        [garbage, 1],
        [otherDb, 1],
      ] as const;
      const runs: [string[], string, number][] = [
        ...homes.flatMap(([where, code]) => [[["timeline"], where, code] as [string[], string, number]]),
        ...[["show", "1"], ["tokens"], ["verify"], ["tail"], ["query"]].map(
          (sub) => [sub, garbage, 1] as [string[], string, number],
        ),
        [["verify"], otherDb, 1],
        ...[["timeline"], ["tokens"], ["verify"], ["show", "4"]].map((sub) => [sub, damaged, 1] as [string[], string, number]),
        [["tokens"], notHome, 2],
      ];
      for (const [sub, where, code] of runs) {
        const watched = where === fileHome || where === nowhere ? home : where;
        const before = hashTree(watched);
        const r = await kpip(["audit", ...sub, "--home", where, "--json"]);
        assert.equal(r.code, code, `${sub[0]} on ${where}: ${r.out}${r.err}`);
        const e = JSON.parse(r.out.trim());
        assert.equal(e.error, code === 2 ? "UsageError" : "HomeReadError");
        if (code === 1) assert.match(e.message, /not a readable SQLite database|without a kpip audit table|database is damaged/);
        assert.deepEqual(hashTree(watched), before);
      }
    } finally {
      for (const d of [notHome, garbage, otherDb, damaged]) rmSync(d, { recursive: true, force: true });
    }
  });

  it("audit tokens on a tampered token table whose parents loop, whose chains are not lists, or that chains tokens 30,000 deep: every token shown once, the loops named", () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-token-loops-"));
    try {
      cpSync(home, dir, { recursive: true });
      const id = (n: number) => `e${n.toString(16).padStart(31, "0")}`;
      const db = new Database(join(dir, "kernel.db"));
      const put = db.prepare(
        "INSERT INTO tokens (id, kid, sub, chain, exp, minted_by, created_at) VALUES (?, 'k', 'mallory', ?, 4102444800000, 'admin', ?)",
      );
      const deep = 30_000;
      db.transaction(() => {
        put.run(id(1), JSON.stringify([id(1)]), 1); // its own parent
        put.run(id(2), JSON.stringify([id(3)]), 2); // two naming each other
        put.run(id(3), JSON.stringify([id(2)]), 3);
        put.run(id(4), "not json", 4);
        put.run(id(5), '{"at":1}', 5);
        db.prepare("UPDATE tokens SET sub = ? WHERE id = ?").run("mallory\u001b]0;owned\u0007\u009b2J", id(5));
        for (let i = 0; i < deep; i++) put.run(id(100 + i), JSON.stringify(i ? [id(99 + i)] : []), 100 + i);
      })();
      db.close();
      const tokens = (...args: string[]) =>
        spawnSync(process.execPath, [MAIN, "audit", "tokens", "--home", dir, ...args], {
          encoding: "utf8",
          timeout: 120_000,
          maxBuffer: 1 << 28,
        });
      const json = tokens("--json");
      assert.equal(json.signal, null, "tokens --json hung");
      assert.equal(json.status, 0, json.stderr);
      const shown = json.stdout
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as { id: string; depth: number; parentLoop: string | null });
      const ids = shown.map((t) => t.id);
      assert.equal(new Set(ids).size, ids.length, "each token once");
      for (const n of [1, 2, 3, 4, 5, 100, 99 + deep]) assert.ok(ids.includes(id(n)), id(n));
      assert.equal(shown.find((t) => t.id === id(99 + deep))?.depth, deep - 1);
      assert.deepEqual(
        shown.filter((t) => t.parentLoop).map((t) => [t.id, t.parentLoop]),
        [
          [id(1), id(1)],
          [id(3), id(2)],
        ],
      );
      const text = tokens();
      assert.equal(text.status, 0, text.stderr);
      assert.match(text.stdout, new RegExp(`parent ${id(1)} closes a loop of parents`));
      const dot = tokens("--format", "dot");
      assert.equal(dot.status, 0, dot.stderr);
      assert.doesNotMatch(dot.stdout, /[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/u);
      // Shown escaped, each escape's backslash escaped for dot (it draws `\u{1b}`, not a control).
      assert.match(dot.stdout, /mallory\\\\u\{1b\}\]0;owned\\\\u\{7\}\\\\u\{9b\}2J/);
      const one = tokens("--token", id(2), "--json");
      assert.equal(one.status, 0, one.stderr);
      assert.deepEqual(
        one.stdout
          .trim()
          .split("\n")
          .map((l) => JSON.parse(l).id),
        [id(3), id(2)],
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a tampered home's record whose detail nests 100,000 deep is shown, its detail as text, by every view: no stack overflow", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-deep-detail-"));
    try {
      copyFileSync(join(home, "kernel.db"), join(dir, "kernel.db"));
      cpSync(join(home, "audit"), join(dir, "audit"), { recursive: true });
      const store = new SqliteStore(join(dir, "kernel.db"));
      store.useAuditSegments(join(dir, "audit"));
      const deep = `${"[".repeat(100_000)}${"]".repeat(100_000)}`;
      const id = "e".repeat(32);
      const fields = ["requestId", "op", "target", "intentHash", "intent", "caps", "status", "errorClass", "message"];
      const blank = Object.fromEntries(
        [...fields, "durationUs", "traceparent", "execution", "domain", "measurements", "detail"].map((f) => [f, null]),
      );
      let seq = head;
      for (const r of [
        { op: "op.state", target: "op://deep", detail: deep },
        { op: "token.derived", target: `token://${id}`, detail: `{"token":{"id":"${id}","sub":"admin","caveats":${deep}}}` },
      ]) {
        seq++;
        const row = {
          ...blank,
          seq,
          time: Date.now(),
          kernel: "k-1",
          session: "s-1",
          persona: "admin",
          phase: "kernel",
          prevHash: Buffer.alloc(32),
          ...r,
        };
        store.appendAudit([
          {
            seq,
            hash: Buffer.alloc(32, 1),
            record: recordBytes(row as unknown as Parameters<typeof recordBytes>[0]),
          } as unknown as AuditRow,
        ]);
      }
      store.close();
      for (const args of [
        ["show", String(head + 1)],
        ["show", String(head + 1), "--json"],
        ["timeline", "--json"],
        ["query", "--json"],
        ["tail", "-n", "2", "--json"],
        ["tokens"],
        ["tokens", "--format", "json"],
      ]) {
        const r = await kpip(["audit", ...args, "--home", dir]);
        assert.equal(r.code, 0, `${args.join(" ")}: ${r.err}`);
        assert.ok(!/call stack/.test(r.out + r.err), `${args.join(" ")}: ${r.err}`);
        if (args.includes("--json") || args.includes("json")) for (const l of r.out.trim().split("\n")) JSON.parse(l);
      }
      const shown = JSON.parse((await kpip(["audit", "show", String(head + 1), "--json", "--home", dir])).out);
      assert.ok(JSON.stringify(shown.record.detail).includes("[[["), "the detail shown as its text");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a kernel.lock made a WAL-mode database (beside a -wal) gets no -wal or -shm of its own from a reader: the home is left as it was", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-wal-lock-"));
    try {
      cpSync(home, dir, { recursive: true });
      rmSync(join(dir, "kernel.lock"));
      const lock = new Database(join(dir, "kernel.lock"));
      lock.pragma("journal_mode = WAL");
      lock.exec("CREATE TABLE owner (pid INTEGER)");
      lock.close();
      writeFileSync(join(dir, "kernel.db-wal"), "");
      const before = hashTree(dir);
      for (const sub of [["timeline"], ["verify"], ["tokens"]]) {
        const r = await kpip(["audit", ...sub, "--home", dir]);
        assert.equal(r.code, 0, `${sub[0]}: ${r.out}${r.err}`);
      }
      assert.deepEqual(hashTree(dir), before);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a tampered home's FIFOs, devices, links to them and sparse files are refused with a plain error, never waited on, read without end or copied out", () => {
    const made: string[] = [];
    // The CLI's private copies are made here: none may be left behind.
    const scratch = mkdtempSync(join(tmpdir(), "kpip-audit-scratch-"));
    made.push(scratch);
    // A guard only (a hang fails the case instead of the run): each run ends at once when it holds.
    const run = (args: string[]) => {
      const r = spawnSync(process.execPath, [MAIN, "audit", ...args], {
        encoding: "utf8",
        timeout: 120_000,
        env: { ...process.env, TMPDIR: scratch },
      });
      return { code: r.status, signal: r.signal, out: r.stdout, err: r.stderr };
    };
    const tampered = (plant: (dir: string) => void): string => {
      const dir = mkdtempSync(join(tmpdir(), "kpip-tampered-home-"));
      made.push(dir);
      cpSync(home, dir, { recursive: true });
      plant(dir);
      return dir;
    };
    const fifo = (path: string) => {
      rmSync(path, { force: true });
      assert.equal(spawnSync("mkfifo", [path]).status, 0);
    };
    const link = (path: string, to: string) => {
      rmSync(path, { force: true });
      symlinkSync(to, path);
    };
    const huge = (path: string) => {
      // Holes cost nothing: larger than any disk this runs on (the filesystem's largest file if less).
      writeFileSync(path, "");
      try {
        truncateSync(path, 2 ** 44 - 2 ** 20);
      } catch {
        truncateSync(path, 2 ** 40);
      }
    };
    const segment = readdirSync(join(home, "audit")).find((f) => f.endsWith(".seg")) as string;
    assert.ok(segment, "the home keeps its audit in segments");
    const cases: [string, (d: string) => void, string[], number, RegExp][] = [
      ["-wal a FIFO", (d) => fifo(join(d, "kernel.db-wal")), ["timeline"], 1, /kernel\.db-wal is not a regular file/],
      ["-wal a link to /dev/zero", (d) => link(join(d, "kernel.db-wal"), "/dev/zero"), ["query"], 1, /not a regular file/],
      ["a sparse -wal of terabytes", (d) => huge(join(d, "kernel.db-wal")), ["timeline"], 1, /does not fit in .*set TMPDIR/],
      [
        "kernel.lock a FIFO (beside a -wal)",
        (d) => {
          fifo(join(d, "kernel.lock"));
          writeFileSync(join(d, "kernel.db-wal"), "");
        },
        ["timeline"],
        0,
        /persona\.register/,
      ],
      ["config.json a FIFO", (d) => fifo(join(d, "config.json")), ["tail"], 0, /persona\.register/],
      ["config.json a FIFO, verify", (d) => fifo(join(d, "config.json")), ["verify"], 2, /config\.json is not a regular file/],
      ["config.json a link to /dev/zero", (d) => link(join(d, "config.json"), "/dev/zero"), ["verify"], 2, /not a regular file/],
      // Quoted by the JSON parser's error: shown as escapes, never sent to the terminal.
      [
        "config.json holding a terminal escape",
        (d) => writeFileSync(join(d, "config.json"), "\u001b]0;PWNED\u0007"),
        ["verify"],
        2,
        /not a JSON object: .*\\u\{1b\}\]0;PWNED\\u\{7\}/,
      ],
      [
        "kernel.key a FIFO",
        (d) => fifo(join(d, "kernel.key")),
        ["verify"],
        1,
        /kernel\.key cannot be used: .* not a regular file/,
      ],
      [
        "kernel.key a link to /dev/urandom",
        (d) => link(join(d, "kernel.key"), "/dev/urandom"),
        ["verify"],
        1,
        /kernel\.key cannot be used/,
      ],
      [
        "kernel.key not a key",
        (d) => writeFileSync(join(d, "kernel.key"), "garbage"),
        ["verify"],
        1,
        /kernel\.key cannot be used/,
      ],
      ["a segment a FIFO", (d) => fifo(join(d, "audit", segment)), ["verify"], 1, /\.seg is not a regular file/],
      [
        "a segment a link to /dev/zero",
        (d) => link(join(d, "audit", segment), "/dev/zero"),
        ["show", "3"],
        1,
        /\.seg is not a regular file/,
      ],
      [
        "the segments' directory a FIFO",
        (d) => {
          rmSync(join(d, "audit"), { recursive: true });
          fifo(join(d, "audit"));
        },
        ["verify"],
        1,
        // Found by the scan past the index, or by the first read the index names (when the scan has no tail to read).
        /ENOTDIR: not a directory|the segments' directory is not a directory/,
      ],
    ];
    try {
      for (const [what, plant, sub, code, says] of cases) {
        const dir = tampered(plant);
        const r = run([...sub, "--home", dir]);
        assert.equal(r.signal, null, `${what}: ${sub[0]} hung`);
        assert.equal(r.code, code, `${what}: ${r.out}${r.err}`);
        assert.match(r.out + r.err, says, what);
        assert.doesNotMatch(r.out + r.err, /\u001b/, `${what}: no raw escape`);
        assert.doesNotMatch(r.err, /internal error|\n\s+at /, `${what}: no stack trace`);
        assert.deepEqual(readdirSync(scratch), [], `${what}: no private copy left`);
      }
    } finally {
      for (const d of made) rmSync(d, { recursive: true, force: true });
    }
  });
});

describe("token ids a record names", () => {
  it("a token whose signature did not verify is shown as ?<the id it claims>, apart from the tokens presented", () => {
    const a = "a".repeat(32);
    const b = "b".repeat(32);
    assert.deepEqual(recordTokenIds("refused", `unverified:${a},h1:${b}`), [`?${a}`, b]);
    assert.deepEqual(recordTokenIds("session", `unverified:${a},refused:${b}`), [`?${a}`, b]);
    // The --token filter matches ids by prefix: a claimed id never is one.
    assert.ok(!recordTokenIds("refused", `unverified:${a}`).some((id) => id.startsWith("aaaa")));
  });
});

describe("the timeline of a long log", () => {
  it("a page by --after or --seq reads the log from PAIR_LOOKBACK records before it, not from record 1", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-long-"));
    const n = PAIR_LOOKBACK + 14_000;
    try {
      const store = new SqliteStore(join(home, "kernel.db"));
      store.useAuditSegments(join(home, "audit"));
      const log = new AuditLog(store, "k", generateKeyPairSync("ed25519").privateKey, { batchMax: 256, checkpointEvery: 10_000 });
      let last: Promise<unknown> = Promise.resolve();
      for (let i = 1; i <= n; i++) {
        // A write (intent + outcome) every 1,000 records, the rest reads: the page's intents pair as before.
        const write = i % 1000 === 999;
        const phase = write ? "intent" : i % 1000 === 0 ? "outcome" : "complete";
        last = log.append({
          session: "s",
          persona: i % 100 === 0 ? "mallory" : "alice",
          phase,
          requestId: write ? Math.floor(i / 1000) : phase === "outcome" ? Math.floor((i - 1) / 1000) : i,
          op: write || phase === "outcome" ? "storage.write" : "system.health",
          target: "kernel://",
          ...(phase === "intent" ? {} : { status: "SUCCESS" }),
        });
        if (i % 5000 === 0) await last;
      }
      await last;
      log.close();
      store.close();
      const reader = openAuditReader(join(home, "kernel.db"));
      try {
        let read = 0;
        const records = reader.records.bind(reader);
        reader.records = (o) => {
          const it = records(o);
          return (function* () {
            for (const r of it) {
              read++;
              yield r;
            }
          })();
        };
        // A flood of records before the page (a persona's reads at 20k/s are 72M an hour) is not walked again per page.
        const seq = timeline(reader, { seq: parseSeqRange(`${n - 1500}..`) }, 0, 5);
        assert.deepEqual(
          seq.rows.map((r) => r.seq),
          [n - 1500, n - 1499, n - 1498, n - 1497, n - 1496],
        );
        assert.equal(seq.more, 1496 - 1, "every row after the page counted (an intent and its outcome are one row)");
        assert.ok(read <= 1501 + PAIR_LOOKBACK, `${read} records read for a page near the end of ${n}`);
        read = 0;
        const page = timeline(reader, { persona: globMatcher("mallory", "/") }, n - 5000, 3);
        const m = Math.ceil((n - 4999) / 100) * 100;
        assert.deepEqual(
          page.rows.map((r) => r.seq),
          [m, m + 100, m + 200],
        );
        assert.ok(read <= 5000 + PAIR_LOOKBACK, `${read} records read for --after ${n - 5000}`);
        // The write whose intent is on the page ends with its outcome, as before.
        const w = timeline(reader, { op: globMatcher("storage.write", ".") }, n - 2000, 1).rows[0];
        assert.ok(w && w.outcomeSeq === w.seq + 1 && w.status === "SUCCESS", JSON.stringify(w));
      } finally {
        reader.close();
      }
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});

describe("audit tokens --format dot on a tampered token table", () => {
  it("escapes backslashes and quotes in every label field: a subject or minter of a tampered home cannot end its label and add nodes", () => {
    const hostile = 'x\\"];\n  "forged" [label="owned';
    const node: TokenNode = {
      id: "a".repeat(32),
      parent: null,
      sub: hostile,
      mintedBy: hostile,
      how: "mint",
      created: 0,
      exp: 0,
      rights: [],
      caveats: [],
      record: null,
      recordBy: null,
      revoked: { by: hostile, at: 0, record: null, ended: [] },
      endedBy: null,
      children: [],
      inTable: true,
      disputed: [],
    };
    const out = treeDot([{ node, depth: 0 }]);
    // One node statement whose label is one dot string: read as dot reads it, to its closing quote.
    assert.equal(out.split('[label="').length, 2, out);
    const stmt = out.split("\n").find((l) => l.includes('[label="')) as string;
    assert.match(stmt, /\[label="(?:[^"\\]|\\.)*", color=red\];$/, out);
    assert.doesNotMatch(out, /^\s*"forged"/m, out);
  });
});

describe("kpip audit timeline: where a session came from", () => {
  it("a Unix-socket session's open row names the process that connected (pid, uid) in its target column, and --json has it whole", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-audit-process-"));
    try {
      await asAdmin(home, async () => {});
      const r = await kpip(["audit", "timeline", "--home", home, "--op", "session.open"]);
      assert.equal(r.code, 0, r.err);
      // The admin's client ran in this process; without the addon (not Linux) the row says so.
      const expected = process.platform === "linux" ? `pid ${process.pid} uid ${process.getuid?.()}` : "process unknown";
      assert.match(r.out, new RegExp(`session\\.open\\s+${expected}\\s`));
      const j = await kpip(["audit", "timeline", "--home", home, "--op", "session.open", "--json"]);
      const row = JSON.parse(j.out.trim().split("\n")[0] as string) as { detail: { process: { pid: number } | null } };
      assert.equal(row.detail.process?.pid ?? null, process.platform === "linux" ? process.pid : null);
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });

  it("a loopback gRPC session's open row names the local user owning the peer's socket (uid) in its target column, and --json has it", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-audit-grpc-user-"));
    try {
      const k = new Kernel({ home, logLevel: "silent", grpcListen: "127.0.0.1:0" });
      await k.start();
      try {
        const c = await KernelClient.connect({
          grpc: { address: k.grpcAddress as string, insecure: true },
          identity: loadIdentity(join(home, "admin.identity")),
          tokens: [readFileSync(join(home, "admin.token"), "utf8").trim()],
          reconnect: false,
        });
        await c.close();
      } finally {
        await k.stop();
      }
      const r = await kpip(["audit", "timeline", "--home", home, "--op", "session.open"]);
      assert.equal(r.code, 0, r.err);
      // This process connected; without the addon (not Linux) the row says the user is unknown.
      const expected = process.platform === "linux" ? `uid ${process.getuid?.()}` : "user unknown";
      assert.match(r.out, new RegExp(`session\\.open\\s+${expected}\\s`));
      const j = await kpip(["audit", "timeline", "--home", home, "--op", "session.open", "--json"]);
      const row = JSON.parse(j.out.trim().split("\n")[0] as string) as { detail: { localUser: { uid: number } | null } };
      assert.equal(row.detail.localUser?.uid ?? null, process.platform === "linux" ? process.getuid?.() : null);
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});
