import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { generateIdentity } from "@kpip/protocol";
import { CommandWorker, until } from "@kpip/protocol/testing";
import Database from "better-sqlite3";
import { DISPATCH, kpip, MAIN, mintArgs, runKernel } from "./run.js";

// Most command lines here run in one worker thread, not a process each (~0.4 s of CPU to load the
// CLI, ~80 times). What is about the installed command runs it as a process: the first call, the
// conventions (--version, global flags first, a typo), a closed pipe, raw bytes on stdout, a
// follow (events tail), a hang guard, and the kernel itself (SIGINT).
const cli = new CommandWorker(DISPATCH);
after(() => cli.close());
const run = (args: string[]) => cli.run(args);

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

  it("walks through: health, persona, mint, act within and outside the grant, attenuate, audit, revoke", async () => {
    const health = kpip(["call", "system.health", ...h]);
    assert.equal(health.code, 0);
    assert.match(health.out, /^SUCCESS/);
    assert.equal(JSON.parse((await run(["call", "system.health", "--json", ...h])).out).status, "SUCCESS");

    const created = JSON.parse((await run(["persona", "create", "alice", "--json", ...h])).out);
    assert.equal(created.persona, "alice");
    assert.equal(created.via, "kernel", "with a kernel running, the registry changes through it");
    assert.equal(statSync(created.identity).mode & 0o777, 0o600);
    assert.equal((await run(["persona", "create", "alice", ...h])).code, 1);

    const mint = await run([
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
    assert.equal((await run(["call", "storage.write", "obj://ws1/alice.txt", "--data", "mine", ...asAlice])).code, 0);
    const read = JSON.parse((await run(["call", "storage.read", "obj://ws1/alice.txt", "--json", ...asAlice])).out);
    assert.equal(Buffer.from(read.payload.data.$bytes, "base64").toString(), "mine");
    const outside = await run(["call", "storage.write", "obj://ws2/x", "--data", "nope", ...asAlice]);
    assert.equal(outside.code, 1);
    assert.match(outside.err, /FAILURE PERMISSION/);

    const ro = (await run(["token", "attenuate", token, "--allow", "storage.read:obj://ws1/**", ...h])).out.trim();
    assert.equal(
      (
        await run([
          "call",
          "storage.write",
          "obj://ws1/alice.txt",
          "--data",
          "x",
          "--identity",
          created.identity,
          "--token",
          ro,
          ...h,
        ])
      ).code,
      1,
    );
    const inspected = JSON.parse((await run(["token", "inspect", ro, "--json", ...h])).out);
    assert.deepEqual(inspected.caveats[0], { t: "rights", v: [["storage.read", "obj://ws1/**"]] });
    const human = await run(["token", "inspect", ro, ...h]);
    assert.equal(human.code, 0, human.err);
    assert.match(human.out, /^token\s+[0-9a-f]{32}/);
    assert.match(human.out, /\nusable\s+yes, by alice\nby you\s+no — .*not usable by persona admin/);
    assert.match(
      human.out,
      /\nallows\s+storage\.read, storage\.write on obj:\/\/ws1\/\*\*\n\s+and only pairs\s+storage\.read on obj:\/\/ws1\/\*\*\n/,
    );
    assert.doesNotMatch(human.out, /problem|valid/);

    const tail = (await run(["audit", "tail", "-n", "3", "--json", ...h])).out.trim().split("\n");
    assert.equal(tail.length, 3);
    const refused = (await run(["audit", "query", "--persona", "alice", "--status", "FAILURE", "--json", ...h])).out
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    assert.ok(refused.some((r) => r.op === "storage.write" && r.errorClass === "PERMISSION"));

    const status = JSON.parse((await run(["status", "--json", ...h])).out);
    assert.equal(status.transports[0].address, join(home, "kernel.sock"));
    assert.ok(status.audit.head > 0);
    assert.ok(Array.isArray(status.sessions));
    assert.match((await run(["status", ...h])).out, /sessions\s+\d+ \(one is this kpip status\)[\s\S]*admin .*\(this command\)/);
    // The process sandbox is always stated: bubblewrap, unavailable (refusing), or none.
    assert.match(kpip(["status", ...h]).out, /sandbox\s+(bubblewrap|UNAVAILABLE|NONE)/);
    assert.ok(["bwrap", "none"].includes(status.sandbox.mode));

    const tokens = JSON.parse((await run(["token", "list", "--json", ...h])).out);
    const id = tokens.find((t: { sub: string }) => t.sub === "alice").id;
    assert.equal((await run(["token", "revoke", id, ...h])).code, 0);
    const after = await run(["call", "storage.read", "obj://ws1/alice.txt", ...asAlice]);
    assert.equal(after.code, 1);
    assert.match(after.err, /REVOKED|CAPABILITY/);
  });

  it("follows the conventions: --version, global flags before the command, a suggestion for a typo, quiet on a closed pipe", async () => {
    const v = kpip(["--version"]);
    assert.equal(v.code, 0);
    assert.match(v.out, /^kpip \d+\.\d+\.\d+ /);
    const before = kpip(["--home", home, "call", "system.health", "--json"]);
    assert.equal(before.code, 0, before.err);
    assert.equal(JSON.parse(before.out).status, "SUCCESS");
    const typo = kpip(["cal", "system.health"]);
    assert.equal(typo.code, 2);
    assert.match(typo.err, /unknown command "cal" — did you mean "call"\?/);
    assert.ok(typo.err.split("\n").length <= 3, "a typo gets one line and a hint, not the whole usage");
    // `| head -1`: the reader leaves after one line; kpip stops quietly instead of an EPIPE stack trace
    const piped = spawnSync(
      "bash",
      ["-o", "pipefail", "-c", `"${process.execPath}" "${MAIN}" audit tail -n 300 --home "${home}" | head -1`],
      {
        encoding: "utf8",
      },
    );
    assert.equal(piped.stdout.split("\n").filter(Boolean).length, 1);
    assert.doesNotMatch(piped.stderr, /EPIPE|internal error|at /);
    assert.equal(piped.status, 0, piped.stderr);
  });

  it("follows DEFERRED ops with --wait, writes raw bytes with --out, suggests ops, and says when ops result/cancel have nothing to give", async () => {
    const waited = await run([
      "call",
      "compute.submit",
      "op://command/echo",
      "--args",
      '{"args":["hi"]}',
      "--wait",
      "--json",
      ...h,
    ]);
    assert.equal(waited.code, 0, waited.err);
    const w = JSON.parse(waited.out);
    assert.equal(w.status, "SUCCESS");
    assert.equal(Buffer.from(w.payload.result.stdout.$bytes, "base64").toString(), "hi\n");
    // a finished op: nothing to cancel, exit 1
    const cancel = await run(["ops", "cancel", w.payload.op, ...h]);
    assert.equal(cancel.code, 1, cancel.out + cancel.err);
    assert.match(cancel.err, /already finished/);
    // a running op: no result yet, exit 1
    const sub = JSON.parse(
      (await run(["call", "compute.submit", "op://command/sleep", "--args", '{"args":["30"]}', "--json", ...h])).out,
    ).payload.op;
    const early = await run(["ops", "result", sub, ...h]);
    assert.equal(early.code, 1, early.out + early.err);
    assert.match(early.err, /still running/);
    assert.equal((await run(["ops", "cancel", sub, ...h])).code, 0);

    const bytes = Buffer.from([0, 1, 2, 255, 10, 13]);
    const src = join(home, "bytes.bin");
    writeFileSync(src, bytes);
    assert.equal((await run(["call", "storage.write", "obj://ws1/raw", "--data-file", src, ...h])).code, 0);
    const dst = join(home, "bytes.out");
    assert.equal((await run(["call", "storage.read", "obj://ws1/raw", "--out", dst, ...h])).code, 0);
    assert.deepEqual(readFileSync(dst), bytes);
    const toStdout = spawnSync(process.execPath, [MAIN, "call", "storage.read", "obj://ws1/raw", "-o", "-", ...h]);
    assert.deepEqual(toStdout.stdout, bytes);

    // typos and no-ops in the token commands are refused, not minted or revoked silently
    const raed = await run(mintArgs("alice", "storage.raed:obj://ws1/**", ...h));
    assert.equal(raed.code, 2, raed.err);
    assert.match(raed.err, /storage\.raed — did you mean "storage\.read"/);
    const ghost = await run(["token", "revoke", "0".repeat(32), ...h]);
    assert.equal(ghost.code, 1, ghost.out);
    assert.match(ghost.err, /no token 0{32}/);
    const mintedFile = join(home, "pairs.token");
    assert.equal((await run(mintArgs("admin", "storage.*:obj://**", "--out", mintedFile, ...h))).code, 0);
    const pairs = await run([
      "token",
      "attenuate",
      `@${mintedFile}`,
      "--allow",
      "storage.read:obj://ws1/**",
      "--allow",
      "storage.write:obj://ws2/**",
      ...h,
    ]);
    // Pairs stay pairs: read on ws1 and write on ws2, never write on ws1 nor read on ws2.
    assert.equal(pairs.code, 0, pairs.err);
    const paired = ["--token", pairs.out.trim(), ...h];
    assert.equal((await run(["call", "storage.write", "obj://ws2/p", "--data", "x", ...paired])).code, 0);
    assert.equal((await run(["call", "storage.read", "obj://ws2/p", ...paired])).code, 1);
    assert.match((await run(["call", "storage.write", "obj://ws1/p", "--data", "x", ...paired])).err, /FAILURE PERMISSION/);

    const typo = await run(["call", "events.emit", "topic://x", ...h]);
    assert.equal(typo.code, 1);
    assert.match(typo.err, /unknown op events\.emit.*did you mean "event\.emit"/);
  });

  it("agents logs shows an agent's control characters as escapes (its output cannot drive the terminal); --raw gives its bytes", async () => {
    const printed = "\u001b]0;PWNED\u0007\u001b[31mred\tcol\n";
    const script = "printf '\\033]0;PWNED\\007\\033[31mred\\tcol\\n'";
    const spawned = await run(["agents", "spawn", "sh/esc", "--lifetime", "60s", ...h, "--", "-c", script]);
    assert.equal(spawned.code, 0, spawned.err);
    await until(
      async () => JSON.parse((await run(["agents", "status", "agent://sh/esc", "--json", ...h])).out).state !== "running",
    );
    const shown = await run(["agents", "logs", "agent://sh/esc", ...h]);
    assert.equal(shown.code, 0, shown.err);
    assert.equal(shown.out, "\\u{1b}]0;PWNED\\u{7}\\u{1b}[31mred\tcol\n");
    const raw = spawnSync(process.execPath, [MAIN, "agents", "logs", "agent://sh/esc", "--raw", ...h]);
    assert.equal(raw.status, 0, String(raw.stderr));
    assert.equal(raw.stdout.toString(), printed);
  });

  it("agents kill, status and logs reach another spawner's agent of the same name with --spawner, never the admin's own; list shows each agent's spawner", async () => {
    // mallory names her agent as the operator's own worker is named: agent://sh/w1.
    const m = JSON.parse(kpip(["persona", "create", "mallory", "--json", ...h]).out);
    const minted = kpip(mintArgs("mallory", "agent.*:agent://**", ...h));
    assert.equal(minted.code, 0, minted.err);
    const asMallory = ["--identity", m.identity, "--token", minted.out.trim(), ...h];
    const sleeper = ["--lifetime", "10m", "--", "-c", "exec sleep 600"];
    assert.equal(kpip(["agents", "spawn", "sh/w1", ...asMallory, ...sleeper]).code, 0);
    assert.equal(kpip(["agents", "spawn", "sh/w1", ...h, ...sleeper]).code, 0);
    const state = (who: string[]) => JSON.parse(kpip(["agents", "status", "agent://sh/w1", "--json", ...who]).out).state;

    const listed = kpip(["agents", "list", ...h]);
    assert.equal(listed.code, 0, listed.err);
    assert.match(listed.out, /^AGENT\s+SPAWNER\s+STATE\s+PERSONA\n/);
    assert.match(listed.out, /\nagent:\/\/sh\/w1\s+mallory\s+running\s+mallory\/agent\.w1\n/);
    assert.match(listed.out, /\nagent:\/\/sh\/w1\s+admin\s+running\s+admin\/agent\.w1\n/);

    const mallorys = ["agent://sh/w1", "--spawner", "mallory", ...h];
    assert.equal(JSON.parse(kpip(["agents", "status", ...mallorys, "--json"]).out).persona, "mallory/agent.w1");
    const killed = kpip(["agents", "kill", ...mallorys]);
    assert.equal(killed.code, 0, killed.err);
    assert.equal(killed.out, "killed agent://sh/w1 of mallory\n");
    await until(() => state(asMallory) !== "running");
    assert.equal(state(h), "running", "the operator's own agent of that name runs on");
    assert.equal(JSON.parse(kpip(["agents", "logs", ...mallorys, "--json"]).out).spawner, "mallory");
    // A second kill says nothing was running, and fails.
    const again = kpip(["agents", "kill", ...mallorys]);
    assert.equal(again.code, 1);
    assert.match(again.err, /agent:\/\/sh\/w1 of mallory was not running/);
    // --spawner is the admin's: mallory cannot name the operator's agent with it.
    assert.match(kpip(["agents", "kill", "agent://sh/w1", "--spawner", "admin", ...asMallory]).err, /FAILURE SEMANTIC/);
    assert.equal(kpip(["agents", "kill", "agent://sh/w1", ...h]).out, "killed agent://sh/w1\n");
  });

  it("events tail and call show the C1 controls and bidirectional overrides an emitter or writer put in its data as escapes", async () => {
    // JSON quoting escapes C0 only: U+009B (a one-byte CSI) and U+202E (right-to-left override) passed through.
    const hostile = "a\u009b2Jb\u202ec\u001b[31m";
    const tail = spawn(process.execPath, [MAIN, "events", "tail", "topic://hostile/**", ...h], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    let seen = "";
    tail.stdout.on("data", (d: Buffer) => {
      seen += d.toString("utf8");
    });
    try {
      const args = JSON.stringify({ data: { msg: hostile, [`k${hostile}`]: 1 } });
      // Emitted until the tail shows it (it subscribes after it starts; an emit counted as heard
      // may have reached another subscriber first, so the tail's output is what ends the wait).
      let last = "";
      await until(
        async () => {
          if (seen.includes("topic://hostile/x")) return true;
          const r = await run(["call", "event.emit", "topic://hostile/x", "--args", args, "--json", ...h]);
          assert.equal(r.code, 0, r.err);
          last = r.out;
          return seen.includes("topic://hostile/x");
        },
        undefined,
        "the tail to show the event",
      ).catch((e: Error) => {
        throw new Error(`${e.message}; the last emit answered ${last}; the tail wrote ${JSON.stringify(seen)}`);
      });
    } finally {
      tail.kill("SIGKILL");
    }
    const line = seen.split("\n").find((l) => l.includes("topic://hostile/x")) as string;
    assert.doesNotMatch(line, /[\u0080-\u009f\u202a-\u202e]/u, line);
    assert.ok(line.includes('"msg":"a\\u{9b}2Jb\\u{202e}c\\u001b[31m"'), line);
    assert.ok(line.includes('"ka\\u{9b}2Jb\\u{202e}c\\u001b[31m":1'), line);

    // Bytes with C0 controls are shown as hex; these have only C1 and bidi ones: shown as text.
    const bytes = Buffer.from("xa\u009b2Jb\u202ec\n").toString("base64");
    assert.equal(
      (await run(["call", "storage.write", "obj://ws1/hostile", "--args", `{"data":{"$bytes":"${bytes}"}}`, ...h])).code,
      0,
    );
    const read = await run(["call", "storage.read", "obj://ws1/hostile", ...h]);
    assert.equal(read.code, 0, read.err);
    assert.doesNotMatch(read.out, /[\u0080-\u009f\u202a-\u202e\u001b]/u, read.out);
    assert.match(read.out, /data: "xa\\u\{9b\}2Jb\\u\{202e\}c\\n"/);
  });

  it("call and audit query show zero-width, invisible and line-separator characters a persona put in its data or an argument's name as escapes", async () => {
    // Not controls, so the protocol's escapes passed them: a terminal shows them as nothing (or a line break).
    const hidden = "pay\u200broll\u2028\u2029x\ufeff\u{e0041}\u2060\u00ad\u034f";
    const shown = "pay\\u{200b}roll\\u{2028}\\u{2029}x\\u{feff}\\u{e0041}\\u{2060}\\u{ad}\\u{34f}";
    const invisible = /[\u00ad\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]|\u034f|\u{e0041}/u;
    assert.equal((await run(["call", "storage.write", "obj://ws1/invisible", "--data", hidden, ...h])).code, 0);
    const read = await run(["call", "storage.read", "obj://ws1/invisible", ...h]);
    assert.equal(read.code, 0, read.err);
    assert.doesNotMatch(read.out, invisible, read.out);
    assert.ok(read.out.includes(`data: "${shown}"`), read.out);
    // The kernel's refusal quotes the argument's name: on the terminal, and in the audit record's view.
    const refused = await run(["call", "storage.stat", "obj://ws1/invisible", "--args", JSON.stringify({ [hidden]: 1 }), ...h]);
    assert.equal(refused.code, 1, refused.err);
    assert.doesNotMatch(refused.err, invisible, refused.err);
    assert.ok(refused.err.includes(shown), refused.err);
    const audited = await run(["audit", "query", "--op", "storage.stat", ...h]);
    assert.equal(audited.code, 0, audited.err);
    assert.doesNotMatch(audited.out, invisible, audited.out);
    assert.ok(audited.out.includes(shown), audited.out);
  });

  it("call with a body over the kernel's limit exits 1 at once with a plain message naming the limit", () => {
    const big = join(home, "big.bin");
    writeFileSync(big, "");
    truncateSync(big, 20_000_000); // 20 MB of zeros, sparse: nothing to write
    const r = spawnSync(process.execPath, [MAIN, "call", "storage.write", "obj://ws1/big", "--data-file", big, ...h], {
      encoding: "utf8",
      timeout: 30_000,
    });
    rmSync(big);
    assert.equal(r.status, 1, `exit ${r.status} ${r.signal ?? ""}: ${r.stderr}`);
    assert.match(r.stderr, /^kpip: request of \d+ bytes exceeds the kernel's limit of 16777216 bytes per message/);
  });

  it("registers public keys in the four formats of PROTOCOL Appendix D and removes personas", async () => {
    const { generateKeyPairSync } = await import("node:crypto");
    const idFile = JSON.parse(
      (await run(["persona", "create", "bob", "--json", "--out", join(home, "bob.identity"), ...h])).out,
    ).identity;
    const pem = join(home, "k.pem");
    writeFileSync(pem, generateKeyPairSync("ed25519").publicKey.export({ format: "pem", type: "spki" }) as string);
    const raw = join(home, "k.txt");
    writeFileSync(raw, Buffer.alloc(32, 9).toString("base64url"));
    assert.equal((await run(["persona", "add", "bob2", "--public-key", idFile, ...h])).code, 0);
    assert.equal((await run(["persona", "add", "carl", "--public-key", pem, ...h])).code, 0);
    assert.equal((await run(["persona", "add", "dora", "--public-key", raw, ...h])).code, 0);
    // PROTOCOL Appendix D's fourth form: a JSON object with only publicKey.
    const onlyPublic = join(home, "k.json");
    writeFileSync(onlyPublic, JSON.stringify({ publicKey: Buffer.alloc(32, 11).toString("base64url") }));
    assert.equal((await run(["persona", "add", "erin", "--public-key", onlyPublic, ...h])).code, 0);
    writeFileSync(raw, Buffer.alloc(31, 9).toString("base64url"));
    assert.equal((await run(["persona", "add", "fay", "--public-key", raw, ...h])).code, 2, "31 bytes: a usage error");
    // A key file that is not what it claims (broken JSON, a PEM that does not parse): a usage error, not an internal one.
    for (const bad of ["{not json", "-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n"]) {
      writeFileSync(raw, bad);
      const r = await run(["persona", "add", "fay", "--public-key", raw, ...h]);
      assert.equal(r.code, 2, r.err);
      assert.doesNotMatch(r.err, /internal error/);
    }
    const list = JSON.parse((await run(["persona", "list", "--json", ...h])).out).map((p: { persona: string }) => p.persona);
    for (const p of ["admin", "alice", "bob", "bob2", "carl", "dora", "erin"]) assert.ok(list.includes(p), p);
    assert.ok(!list.includes("fay"));
    assert.equal((await run(["persona", "remove", "dora", ...h])).code, 0);
    assert.equal((await run(["persona", "remove", "dora", ...h])).code, 1);
    const audited = (await run(["audit", "query", "--op", "persona.remove", "--json", ...h])).out
      .trim()
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
    assert.equal((await run(["audit", "verify", ...h])).code, 0);
    assert.equal(JSON.parse((await run(["audit", "verify", "--json", ...h])).out).ok, true);
    // One byte of what record 3 says, in its segment file: its bytes follow its hash and their length.
    const hash = Buffer.from(JSON.parse((await run(["audit", "show", "3", "--json", ...h])).out).record.hash, "hex");
    const segDir = join(home, "audit");
    const seg = join(segDir, readdirSync(segDir).sort()[0] as string);
    const bytes = readFileSync(seg);
    const at = bytes.indexOf(hash);
    assert.ok(at > 0, "record 3's hash is in the first segment");
    const len = bytes.readUInt32LE(at + hash.length);
    const last = at + hash.length + 4 + len - 1;
    bytes.writeUInt8((bytes[last] as number) ^ 1, last);
    writeFileSync(seg, bytes);
    const v = await run(["audit", "verify", ...h]);
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

  it("persona add refuses a public key that is no Ed25519 point, or a point of small order (anyone could attest as the persona), offline as the kernel does", async () => {
    await stop(await runKernel(home));
    const file = join(home, "weak.key");
    const identity = Buffer.alloc(32);
    identity[0] = 1;
    for (const [key, why] of [
      [identity, /not a usable Ed25519 public key: a point of small order/],
      [Buffer.alloc(32), /a point of small order/],
      [Buffer.alloc(32, 2), /not a point of the Ed25519 curve/],
    ] as const) {
      writeFileSync(file, key.toString("base64url"));
      const r = await run(["persona", "add", "weak", "--public-key", file, ...h]);
      assert.equal(r.code, 2, r.err);
      assert.match(r.err, why);
      // The same key as the publicKey of a JSON file.
      writeFileSync(file, JSON.stringify({ publicKey: key.toString("base64url") }));
      assert.match((await run(["persona", "add", "weak", "--public-key", file, ...h])).err, why);
    }
    const list = JSON.parse((await run(["persona", "list", "--json", ...h])).out).map((p: { persona: string }) => p.persona);
    assert.ok(!list.includes("weak"), "nothing registered");
    writeFileSync(file, Buffer.from(generateIdentity("weak").publicKey).toString("base64url"));
    const ok = await run(["persona", "add", "weak", "--public-key", file, ...h]);
    assert.equal(ok.code, 0, ok.err);
    assert.equal((await run(["persona", "remove", "weak", ...h])).code, 0);
  });

  it("are made on the home database and put on the audit record when the kernel next runs", async () => {
    await stop(await runKernel(home));
    const created = JSON.parse((await run(["persona", "create", "frank", "--json", ...h])).out);
    assert.equal(created.via, "offline");
    assert.equal(statSync(created.identity).mode & 0o777, 0o600);
    // A token for frank, minted by a kernel, then the kernel stops again: the offline removal ends it.
    const minting = await runKernel(home);
    let tokenId: string;
    try {
      const m = await run(mintArgs("frank", "system.*:kernel://", "--json", ...h));
      assert.equal(m.code, 0, m.err);
      tokenId = JSON.parse(m.out).id;
    } finally {
      await stop(minting);
    }
    const removed = await run(["persona", "remove", "frank", ...h]);
    assert.equal(removed.code, 0, removed.err);
    assert.match(removed.out, /offline \(audited when the kernel next runs\)/);
    assert.equal((await run(["persona", "remove", "frank", ...h])).code, 1);

    const anchorFile = join(anchorDir, "anchors.jsonl");
    const k = await runKernel(home, "--audit-anchor-file", anchorFile);
    try {
      const q = async (op: string) =>
        (await run(["audit", "query", "--op", op, "--json", ...h])).out
          .trim()
          .split("\n")
          .map((l) => JSON.parse(l))
          .filter((r) => r.target === "persona://frank");
      assert.deepEqual(
        (await q("persona.register")).map((r) => [r.phase, r.status]),
        [["offline", "SUCCESS"]],
      );
      // The key it registered (as the session.open of whoever attests as frank names its key).
      assert.ok(
        ((await q("persona.register"))[0].message as string).startsWith(
          `created with kpip persona create (key ${created.publicKey}) (by kpip persona (uid`,
        ),
      );
      assert.deepEqual(
        (await q("persona.remove")).map((r) => r.phase),
        ["offline"],
      );
      // What the removal ended is on the record, as for a removal the kernel makes.
      assert.match((await q("persona.remove"))[0].message, new RegExp(`personas frank; tokens ended: ${tokenId}`));
    } finally {
      await stop(k);
    }
    assert.equal((await run(["audit", "verify", ...h])).code, 0);

    const anchors = join(home, "anchors.jsonl");
    writeFileSync(anchors, "");
    const none = await run(["audit", "verify", "--anchors", anchors, ...h]);
    assert.equal(none.code, 0, none.err);
    assert.match(none.out, /0 anchors matched/);
    writeFileSync(anchors, "{not json}\n");
    const bad = await run(["audit", "verify", "--anchors", anchors, ...h]);
    assert.equal(bad.code, 2);
    assert.match(bad.err, /anchor file line 1/);
    const missing = await run(["audit", "verify", "--anchors", join(home, "nope.jsonl"), ...h]);
    assert.equal(missing.code, 2);
    assert.match(missing.err, /cannot read --anchors/);

    // The kernel wrote a signed checkpoint to the anchor file when it stopped: cutting the log
    // back past it, checkpoint and all, goes unnoticed by the chain alone but not by the anchors.
    const real = await run(["audit", "verify", "--anchors", anchorFile, "--json", ...h]);
    assert.equal(real.code, 0, real.out);
    const n = JSON.parse(real.out).anchors;
    assert.ok(n >= 1, real.out);
    const db = new Database(join(home, "kernel.db"));
    // The index of the segment files cut back to record 2 (what readers and verify go by).
    db.prepare("DELETE FROM audit_batches WHERE first_seq > 2").run();
    db.prepare("UPDATE audit_batches SET last_seq = 2 WHERE last_seq > 2").run();
    db.prepare("DELETE FROM audit_checkpoints WHERE seq > 2").run();
    // …and the segment bytes past that span cut off, so no reader finds them past the index.
    const end = db.prepare("SELECT segment, offset + length AS end FROM audit_batches ORDER BY first_seq DESC").get() as {
      segment: number;
      end: number;
    };
    db.close();
    for (const f of readdirSync(join(home, "audit"))) {
      if (Number(f.slice(0, 16)) > end.segment) rmSync(join(home, "audit", f));
      else if (Number(f.slice(0, 16)) === end.segment) truncateSync(join(home, "audit", f), end.end);
    }
    assert.equal((await run(["audit", "verify", ...h])).code, 0);
    const cut = await run(["audit", "verify", "--anchors", anchorFile, ...h]);
    assert.equal(cut.code, 1);
    assert.match(cut.out, /BROKEN at record \d+: record \d+ named by an anchor is missing \(log truncated\)/);
  });
});
