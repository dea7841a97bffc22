import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { generateIdentity, serializeIdentity } from "@kpip/protocol";
import Database from "better-sqlite3";
import { helpText } from "../src/command.js";
import { COMMANDS } from "../src/commands/index.js";

const MAIN = fileURLToPath(new URL("../src/main.js", import.meta.url));
const kpip = (args: string[], env: NodeJS.ProcessEnv = {}) => {
  const r = spawnSync(process.execPath, [MAIN, ...args], { encoding: "utf8", env: { ...process.env, ...env } });
  return { code: r.status, out: r.stdout, err: r.stderr };
};

/** `kpip kernel` in a child process on `home`; resolves once it says it is running. */
async function runKernel(home: string, ...extra: string[]): Promise<ChildProcess> {
  const k = spawn(process.execPath, [MAIN, "kernel", "--home", home, "--log-level", "silent", ...extra], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  await new Promise<void>((resolve) => {
    let out = "";
    k.stdout?.on("data", (d) => {
      out += d;
      if (out.includes("is running")) resolve();
    });
  });
  return k;
}

describe("the kpip CLI, as the README walkthrough uses it", () => {
  const home = mkdtempSync(join(tmpdir(), "kpip-cli-"));
  let kernel: ChildProcess;
  const h = ["--home", home];
  before(async () => {
    kernel = await runKernel(home);
  });
  after(() => {
    kernel.kill("SIGKILL");
    rmSync(home, { recursive: true, force: true });
  });

  it("walks through: health, persona, mint, act within and outside the grant, attenuate, audit, revoke", () => {
    const health = kpip(["call", "system.health", ...h]);
    assert.equal(health.code, 0);
    assert.match(health.out, /^SUCCESS/);
    assert.equal(JSON.parse(kpip(["call", "system.health", "--json", ...h]).out).status, "SUCCESS");

    const created = JSON.parse(kpip(["persona", "create", "alice", "--json", ...h]).out);
    assert.equal(created.persona, "alice");
    assert.equal(created.via, "kernel", "with a kernel running, the registry changes through it");
    assert.equal(statSync(created.identity).mode & 0o777, 0o600);
    assert.equal(kpip(["persona", "create", "alice", ...h]).code, 1);

    const mint = kpip([
      "token",
      "mint",
      "--persona",
      "alice",
      "--allow",
      "storage.read,storage.write:obj://ws1/**",
      "--limit",
      "storage.bytes=10MB",
      "--ttl",
      "1h",
      ...h,
    ]);
    assert.equal(mint.code, 0, mint.err);
    const token = mint.out.trim();
    const asAlice = ["--identity", created.identity, "--token", token, ...h];
    assert.equal(kpip(["call", "storage.write", "obj://ws1/alice.txt", "--data", "mine", ...asAlice]).code, 0);
    const read = JSON.parse(kpip(["call", "storage.read", "obj://ws1/alice.txt", "--json", ...asAlice]).out);
    assert.equal(Buffer.from(read.payload.data.$bytes, "base64").toString(), "mine");
    const outside = kpip(["call", "storage.write", "obj://ws2/x", "--data", "nope", ...asAlice]);
    assert.equal(outside.code, 1);
    assert.match(outside.err, /FAILURE PERMISSION/);

    const ro = kpip(["token", "attenuate", token, "--allow", "storage.read:obj://ws1/**", ...h]).out.trim();
    assert.equal(
      kpip(["call", "storage.write", "obj://ws1/alice.txt", "--data", "x", "--identity", created.identity, "--token", ro, ...h])
        .code,
      1,
    );
    const inspected = JSON.parse(kpip(["token", "inspect", ro, "--json", ...h]).out);
    assert.deepEqual(inspected.caveats[0], { t: "ops", v: ["storage.read"] });

    const tail = kpip(["audit", "tail", "-n", "3", "--json", ...h])
      .out.trim()
      .split("\n");
    assert.equal(tail.length, 3);
    const refused = kpip(["audit", "query", "--persona", "alice", "--status", "FAILURE", "--json", ...h])
      .out.trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    assert.ok(refused.some((r) => r.op === "storage.write" && r.errorClass === "PERMISSION"));

    const status = JSON.parse(kpip(["status", "--json", ...h]).out);
    assert.equal(status.transports[0].address, join(home, "kernel.sock"));
    assert.ok(status.audit.head > 0);
    assert.ok(Array.isArray(status.sessions));
    assert.match(kpip(["status", ...h]).out, /sessions\s+\d+/);
    // The process sandbox is always stated: bubblewrap, unavailable (refusing), or none.
    assert.match(kpip(["status", ...h]).out, /sandbox\s+(bubblewrap|UNAVAILABLE|NONE)/);
    assert.ok(["bwrap", "none"].includes(status.sandbox.mode));

    const tokens = JSON.parse(kpip(["token", "list", "--json", ...h]).out);
    const id = tokens.find((t: { sub: string }) => t.sub === "alice").id;
    assert.equal(kpip(["token", "revoke", id, ...h]).code, 0);
    const after = kpip(["call", "storage.read", "obj://ws1/alice.txt", ...asAlice]);
    assert.equal(after.code, 1);
    assert.match(after.err, /REVOKED|CAPABILITY/);
  });

  it("registers public keys in three formats and removes personas", async () => {
    const { generateKeyPairSync } = await import("node:crypto");
    const idFile = JSON.parse(
      kpip(["persona", "create", "bob", "--json", "--out", join(home, "bob.identity"), ...h]).out,
    ).identity;
    const pem = join(home, "k.pem");
    writeFileSync(pem, generateKeyPairSync("ed25519").publicKey.export({ format: "pem", type: "spki" }) as string);
    const raw = join(home, "k.txt");
    writeFileSync(raw, Buffer.alloc(32, 9).toString("base64url"));
    assert.equal(kpip(["persona", "add", "bob2", "--public-key", idFile, ...h]).code, 0);
    assert.equal(kpip(["persona", "add", "carl", "--public-key", pem, ...h]).code, 0);
    assert.equal(kpip(["persona", "add", "dora", "--public-key", raw, ...h]).code, 0);
    const list = JSON.parse(kpip(["persona", "list", "--json", ...h]).out).map((p: { persona: string }) => p.persona);
    for (const p of ["admin", "alice", "bob", "bob2", "carl", "dora"]) assert.ok(list.includes(p), p);
    assert.equal(kpip(["persona", "remove", "dora", ...h]).code, 0);
    assert.equal(kpip(["persona", "remove", "dora", ...h]).code, 1);
    const audited = kpip(["audit", "query", "--op", "persona.remove", "--json", ...h])
      .out.trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    assert.ok(audited.some((r) => r.target === "persona://dora" && r.persona === "admin" && r.status === "SUCCESS"));
    assert.ok(audited.some((r) => r.target === "persona://dora" && r.status === "FAILURE" && r.errorClass === "SEMANTIC"));
  });

  it("stops cleanly on SIGINT, and audit verify catches an edited row", async () => {
    kernel.kill("SIGINT");
    const code = await new Promise((r) => kernel.once("exit", r));
    assert.equal(code, 0);
    assert.ok(!existsSync(join(home, "kernel.sock")));
    assert.equal(kpip(["audit", "verify", ...h]).code, 0);
    assert.equal(JSON.parse(kpip(["audit", "verify", "--json", ...h]).out).ok, true);
    const db = new Database(join(home, "kernel.db"));
    db.prepare("UPDATE audit SET target = 'x' WHERE seq = 3").run();
    db.close();
    const v = kpip(["audit", "verify", ...h]);
    assert.equal(v.code, 1);
    assert.match(v.out, /BROKEN at record 3/);
  });
});

describe("registry changes while no kernel runs", () => {
  const home = mkdtempSync(join(tmpdir(), "kpip-cli-off-"));
  after(() => rmSync(home, { recursive: true, force: true }));
  const h = ["--home", home];
  const anchorDir = mkdtempSync(join(tmpdir(), "kpip-cli-anchors-"));
  after(() => rmSync(anchorDir, { recursive: true, force: true }));
  const stop = async (k: ChildProcess) => {
    k.kill("SIGINT");
    await new Promise((r) => k.once("exit", r));
  };

  it("are made on the home database and put on the audit record when the kernel next runs", async () => {
    await stop(await runKernel(home));
    const created = JSON.parse(kpip(["persona", "create", "frank", "--json", ...h]).out);
    assert.equal(created.via, "offline");
    assert.equal(statSync(created.identity).mode & 0o777, 0o600);
    const removed = kpip(["persona", "remove", "frank", ...h]);
    assert.equal(removed.code, 0, removed.err);
    assert.match(removed.out, /offline \(audited when the kernel next runs\)/);
    assert.equal(kpip(["persona", "remove", "frank", ...h]).code, 1);

    const anchorFile = join(anchorDir, "anchors.jsonl");
    const k = await runKernel(home, "--audit-anchor-file", anchorFile);
    try {
      const q = (op: string) =>
        kpip(["audit", "query", "--op", op, "--json", ...h])
          .out.trim()
          .split("\n")
          .map((l) => JSON.parse(l))
          .filter((r) => r.target === "persona://frank");
      assert.deepEqual(
        q("persona.register").map((r) => [r.phase, r.status]),
        [["offline", "SUCCESS"]],
      );
      assert.match(q("persona.register")[0].message, /kpip persona create \(by kpip persona \(uid/);
      assert.deepEqual(
        q("persona.remove").map((r) => r.phase),
        ["offline"],
      );
    } finally {
      await stop(k);
    }
    assert.equal(kpip(["audit", "verify", ...h]).code, 0);

    const anchors = join(home, "anchors.jsonl");
    writeFileSync(anchors, "");
    const none = kpip(["audit", "verify", "--anchors", anchors, ...h]);
    assert.equal(none.code, 0, none.err);
    assert.match(none.out, /0 anchors matched/);
    writeFileSync(anchors, "{not json}\n");
    const bad = kpip(["audit", "verify", "--anchors", anchors, ...h]);
    assert.equal(bad.code, 2);
    assert.match(bad.err, /anchor file line 1/);
    const missing = kpip(["audit", "verify", "--anchors", join(home, "nope.jsonl"), ...h]);
    assert.equal(missing.code, 2);
    assert.match(missing.err, /cannot read --anchors/);

    // The kernel wrote a signed checkpoint to the anchor file when it stopped: cutting the log
    // back past it, checkpoint and all, goes unnoticed by the chain alone but not by the anchors.
    const real = kpip(["audit", "verify", "--anchors", anchorFile, "--json", ...h]);
    assert.equal(real.code, 0, real.out);
    const n = JSON.parse(real.out).anchors;
    assert.ok(n >= 1, real.out);
    const db = new Database(join(home, "kernel.db"));
    db.prepare("DELETE FROM audit WHERE seq > 2").run();
    db.prepare("DELETE FROM audit_checkpoints WHERE seq > 2").run();
    db.close();
    assert.equal(kpip(["audit", "verify", ...h]).code, 0);
    const cut = kpip(["audit", "verify", "--anchors", anchorFile, ...h]);
    assert.equal(cut.code, 1);
    assert.match(cut.out, /BROKEN at record \d+: record \d+ named by an anchor is missing \(log truncated\)/);
  });
});

describe("bad command lines", () => {
  const home = mkdtempSync(join(tmpdir(), "kpip-cli-bad-"));
  after(() => rmSync(home, { recursive: true, force: true }));
  const h = ["--home", home];
  const cases: [string, string[], number, RegExp?][] = [
    ["no command", [], 2],
    ["unknown command", ["frobnicate"], 2, /unknown command/],
    ["call without op", ["call", ...h], 2, /missing <op>/],
    ["unknown flag", ["call", "system.health", "--frob", ...h], 2, /--help/],
    ["--args not JSON", ["call", "x.y", "--args", "{", ...h], 2, /not valid JSON/],
    ["--args an array", ["call", "x.y", "--args", "[1]", ...h], 2, /JSON object/],
    ["--args with a float", ["call", "x.y", "--args", '{"a":0.5}', ...h], 2, /integers/],
    ["--data with --data-file", ["call", "x.y", "--data", "a", "--data-file", "/etc/hostname", ...h], 2],
    ["unreadable --data-file", ["call", "x.y", "--data-file", "/nonexistent/file", ...h], 2, /cannot read/],
    ["bad --deadline-ms", ["call", "x.y", "--deadline-ms", "abc", ...h], 2],
    [
      "an identity file that is not one",
      ["call", "system.health", "--socket", join(home, "none.sock"), "--identity", "/dev/null", ...h],
      2,
      /identity/,
    ],
    ["invalid persona id", ["persona", "create", "Bad Id", ...h], 2, /invalid persona id/],
    ["persona add without key", ["persona", "add", "x", ...h], 2],
    ["persona on a missing home", ["persona", "list", "--home", join(home, "missing")], 2, /no kernel home/],
    ["bad --since", ["audit", "query", "--since", "yesterdayish", ...h], 2],
    ["bad --status", ["audit", "query", "--status", "MAYBE", ...h], 2],
    ["tail -n 0", ["audit", "tail", "-n", "0", ...h], 2],
    ["bad --allow", ["token", "mint", "--persona", "a", "--allow", "nope", "--ttl", "1h", ...h], 2, /OPS:TARGETS/],
    ["bad --ttl", ["token", "mint", "--persona", "a", "--allow", "x.y:kernel://", "--ttl", "soon", ...h], 2, /duration/],
    ["bad --limit", ["token", "mint", "--persona", "a", "--allow", "x.y:kernel://", "--ttl", "1h", "--limit", "x", ...h], 2],
    ["revoke without id", ["token", "revoke", ...h], 2],
    ["kernel with a bad integer", ["kernel", "--max-sessions", "abc", ...h], 2, /max-sessions/],
  ];
  for (const [name, args, code, re] of cases) {
    it(`${name} → exit ${code}`, () => {
      const r = kpip(args);
      assert.equal(r.code, code, `${r.out}${r.err}`);
      if (re) assert.match(r.out + r.err, re);
    });
  }

  it("a kernel socket in a world-writable directory is refused, naming it", () => {
    const open = mkdtempSync(join(tmpdir(), "kpip-open-"));
    chmodSync(open, 0o777);
    const r = kpip(["kernel", "--home", join(home, "k"), "--socket", join(open, "k.sock"), "--log-level", "silent"]);
    assert.equal(r.code, 2);
    assert.match(r.err, new RegExp(open));
    rmSync(open, { recursive: true, force: true });
  });

  it("no reachable kernel exits 3 and says what to do", () => {
    const idFile = join(home, "x.identity");
    writeFileSync(idFile, serializeIdentity(generateIdentity("x")));
    const r = kpip(["call", "system.health", "--socket", join(home, "none.sock"), "--identity", idFile]);
    assert.equal(r.code, 3);
    assert.match(r.err, /no kernel at .*npm start/);
  });

  it("docs/cli.md is generated from the current command definitions", () => {
    const doc = readFileSync(fileURLToPath(new URL("../../../../docs/cli.md", import.meta.url)), "utf8");
    for (const c of COMMANDS)
      assert.ok(doc.includes(helpText(c).trimEnd()), `docs/cli.md is stale for ${c.name}: run node scripts/gen-cli-doc.mjs`);
  });

  for (const cmd of ["kernel", "persona", "token", "call", "agents", "ops", "events", "audit", "status"]) {
    it(`kpip ${cmd} --help shows an example`, () => {
      const r = kpip([cmd, "--help"]);
      assert.equal(r.code, 0);
      assert.match(r.out, /example:/);
    });
  }
});

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
        scripts: { kpip: root.scripts.kpip.replace("packages/cli/dist/src/main.js", MAIN) },
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
      assert.match(all, /sessions\s+\d+/);
      assert.equal(r.status, 0, all);
    } finally {
      k.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
