import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  chmodSync,
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  truncateSync,
  writeFileSync,
} from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  attenuate,
  type CborValue,
  decodeIntent,
  decodeMessage,
  encodeMessage,
  FrameDecoder,
  generateIdentity,
  mintToken,
  type Response,
  serializeIdentity,
  tokenFromString,
  tokenToString,
} from "@kpip/protocol";
import Database from "better-sqlite3";
import { kpip, MAIN, mintArgs, runKernel } from "./run.js";

/**
 * `kpip` with standard input given and a time limit: a safety net so that a CLI that blocks on
 * a FIFO fails the test rather than hanging it (the fixed CLI answers at once).
 */
const kpipBounded = (args: string[], input = "", env: NodeJS.ProcessEnv = {}) => {
  const r = spawnSync(process.execPath, [MAIN, ...args], {
    encoding: "utf8",
    input,
    env: { ...process.env, ...env },
    timeout: 120_000,
    killSignal: "SIGKILL",
  });
  return { code: r.status, out: r.stdout, err: r.stderr, signal: r.signal };
};

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

  it("token, identity and public-key files a persona handed over are read only as regular files of a bounded size: a FIFO, /dev/zero or a huge file is refused at once, exit 2", () => {
    const fifo = join(work, "handed.fifo");
    execFileSync("mkfifo", [fifo]);
    const zero = join(work, "handed-zero.token");
    symlinkSync("/dev/zero", zero);
    const huge = join(work, "huge.token");
    writeFileSync(huge, "A".repeat(2 * 1024 * 1024));
    const cases: [string, string[], NodeJS.ProcessEnv?][] = [
      ["token inspect @fifo", ["token", "inspect", `@${fifo}`, ...h]],
      ["token inspect @/dev/zero", ["token", "inspect", `@${zero}`, ...h]],
      ["token attenuate @huge", ["token", "attenuate", `@${huge}`, "--ttl", "1m", ...h]],
      ["call --token @fifo", ["call", "system.health", "--token", `@${fifo}`, ...h]],
      ["call --token @/dev/zero", ["call", "system.health", "--token", `@${zero}`, ...h]],
      ["KPIP_TOKEN=@fifo", ["call", "system.health", ...h], { KPIP_TOKEN: `@${fifo}` }],
      ["call --identity fifo", ["call", "system.health", "--identity", fifo, ...h]],
      ["call --identity /dev/zero", ["call", "system.health", "--identity", zero, ...h]],
      ["persona add --public-key fifo", ["persona", "add", "mallory", "--public-key", fifo, ...h]],
      ["persona add --public-key /dev/zero", ["persona", "add", "mallory", "--public-key", zero, ...h]],
    ];
    for (const [what, args, env] of cases) {
      const r = kpipBounded(args, "", env);
      assert.equal(r.signal, null, `${what}: killed (${r.signal}): it blocked or ran out of memory`);
      assert.equal(r.code, 2, `${what}: ${r.out}${r.err}`);
      assert.match(r.err, /not a regular file|, over \d+/, what);
      assert.doesNotMatch(r.err, /internal error|\n\s+at /, what);
    }
    // A token through standard input is bounded too.
    const piped = kpipBounded(["token", "inspect", "-", ...h], "A".repeat(2 * 1024 * 1024));
    assert.equal(piped.code, 2, piped.err);
    assert.match(piped.err, /standard input is over \d+ bytes/);
    // The persona was not registered from what the FIFO or /dev/zero could have given.
    assert.doesNotMatch(kpip(["persona", "list", ...h]).out, /mallory/);
  });

  it("call --data-file and audit verify --anchors read only regular files: a FIFO or /dev/zero is refused at once (exit 2), a file over the kernel's maxBody unread (exit 1)", () => {
    const fifo = join(work, "data.fifo");
    execFileSync("mkfifo", [fifo]);
    const zero = join(work, "data-zero");
    symlinkSync("/dev/zero", zero);
    // The FIFOs first: a CLI that still read them whole would block there, not on /dev/zero's endless bytes.
    const cases: [string, string[]][] = [
      ["call --data-file fifo", ["call", "storage.write", "obj://ws1/from-fifo", "--data-file", fifo, ...h]],
      ["audit verify --anchors fifo", ["audit", "verify", "--anchors", fifo, ...h]],
      ["call --data-file /dev/zero", ["call", "storage.write", "obj://ws1/from-zero", "--data-file", zero, ...h]],
      ["audit verify --anchors /dev/zero", ["audit", "verify", "--anchors", zero, ...h]],
    ];
    for (const [what, args] of cases) {
      const r = kpipBounded(args);
      assert.equal(r.signal, null, `${what}: killed (${r.signal}): it blocked or ran out of memory`);
      assert.equal(r.code, 2, `${what}: ${r.out}${r.err}`);
      assert.match(r.err, /not a regular file/, what);
    }
    const big = join(work, "big.bin");
    writeFileSync(big, "");
    truncateSync(big, 16 * 1024 * 1024 + 1); // one byte over the default maxBody, sparse
    const over = kpipBounded(["call", "storage.write", "obj://ws1/big", "--data-file", big, ...h]);
    assert.equal(over.code, 1, over.err);
    assert.match(over.err, /request of 16777217 bytes exceeds the kernel's limit of 16777216 bytes per message/);
    // A regular file within the limit is still sent whole.
    const small = join(work, "small.bin");
    writeFileSync(small, Buffer.alloc(300_000, 7));
    assert.equal(kpip(["call", "storage.write", "obj://ws1/small", "--data-file", small, ...h]).code, 0);
    const back = JSON.parse(kpip(["call", "storage.read", "obj://ws1/small", "--json", ...h]).out);
    assert.equal(Buffer.from(back.payload.data.$bytes, "base64").length, 300_000);
  });

  it("audit verify --anchors refuses a file in a directory others may write, or a link to one: they could swap in anchors of a rewritten chain (exit 2)", () => {
    const shared = join(work, "shared-anchors");
    mkdirSync(shared);
    chmodSync(shared, 0o777); // no sticky bit: anyone renames the file away and puts theirs there
    const inShared = join(shared, "anchors.log");
    writeFileSync(inShared, "");
    const link = join(work, "anchors-link.log");
    symlinkSync(inShared, link);
    for (const [what, file] of [
      ["in the directory", inShared],
      ["through a link", link],
    ] as const) {
      const r = kpipBounded(["audit", "verify", "--anchors", file, ...h]);
      assert.equal(r.code, 2, `${what}: ${r.out}${r.err}`);
      assert.match(r.err, /--anchors: .*shared-anchors, above the anchor file .* is writable by group or others/, what);
    }
    // The same file in a directory only its user writes is read.
    chmodSync(shared, 0o700);
    const r = kpipBounded(["audit", "verify", "--anchors", inShared, ...h]);
    assert.doesNotMatch(r.err, /writable by group or others/);
  });

  it("token inspect shows a caveat's text escaped on its own line: a token handed over cannot forge a verdict line nor drive the terminal", () => {
    assert.equal(kpip(["persona", "create", "alice", ...h]).code, 0);
    const file = join(work, "alice.token");
    const minted = kpip(mintArgs("alice", "storage.read:obj://ws1/**", "--out", file, ...h));
    assert.equal(minted.code, 0, minted.err);
    // Anyone holding a token may append a caveat offline; a domain may be any text of up to 128 characters.
    const forged = "example.com\nusable     yes, by admin\nallows     ** on **\u001b]52;c;cm0gLXJmIH4=\u0007\rx";
    const evil = attenuate(tokenFromString(readFileSync(file, "utf8")), { t: "domains", v: [forged] });
    const handed = join(work, "handed.token");
    writeFileSync(handed, `${tokenToString(evil)}\n`);
    const r = kpip(["token", "inspect", `@${handed}`, ...h]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^usable {5}yes, by alice$/m);
    assert.doesNotMatch(r.out, /by admin$|^allows {5}\*\* on \*\*/m, "no line forged by the caveat");
    assert.doesNotMatch(r.out, /[\u001b\u0007\r]/, "no control character reaches the terminal");
    assert.match(r.out, /^domains {4}example\.com\\u\{a\}usable/m);
  });

  it("token inspect of a forged token handed over says it is invalid, never usable by the subject it claims", () => {
    const file = join(work, "alice.token");
    // The holder keeps the claims and rewrites them: admin as subject, every right, signed with a key of its own.
    const genuine = tokenFromString(readFileSync(file, "utf8"));
    const forged = mintToken(randomBytes(32), {
      ...genuine.claims,
      id: randomBytes(16).toString("hex"),
      sub: "admin",
      rights: [{ ops: ["**"], targets: ["**"] }],
    });
    const handed = join(work, "forged.token");
    writeFileSync(handed, `${tokenToString(forged)}\n`);
    const r = kpip(["token", "inspect", `@${handed}`, ...h]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^usable {5}NO — invalid: token signature is invalid; what follows is only what it claims$/m);
    assert.doesNotMatch(r.out, /yes, by admin/);
  });

  it("a home whose database is damaged or not one, or no home at all, is a plain usage error (exit 2) for kernel, persona and token rotate-key: no stack trace", () => {
    const damaged = join(work, "damaged-home");
    mkdirSync(damaged, { mode: 0o700 });
    writeFileSync(join(damaged, "kernel.db"), Buffer.alloc(8192, 0x5a), { mode: 0o600 });
    const cases: [string, string[]][] = [
      ["kernel", ["kernel", "--home", damaged, "--log-level", "silent"]],
      ["persona list", ["persona", "list", "--home", damaged]],
      ["persona create", ["persona", "create", "zed", "--home", damaged]],
      ["token rotate-key, no home", ["token", "rotate-key", "--home", join(work, "no-such-home")]],
    ];
    for (const [what, args] of cases) {
      const r = kpipBounded(args);
      assert.equal(r.signal, null, `${what}: killed`);
      assert.equal(r.code, 2, `${what}: ${r.out}${r.err}`);
      assert.match(r.err, /damaged or not a database|no kernel home/, what);
      assert.doesNotMatch(r.err, /internal error|\n\s+at /, what);
    }
    assert.throws(() => statSync(join(work, "no-such-home")), /ENOENT/, "rotate-key made no home");
  });

  it("token rotate-key and retire-key on a home whose key file is gone make none (it would hold only a new key: every token issued would stop verifying); retire-key of an unknown key is exit 2, escaped", () => {
    const keyless = join(work, "keyless-home");
    mkdirSync(keyless, { mode: 0o700 });
    copyFileSync(join(home, "kernel.db"), join(keyless, "kernel.db"));
    for (const args of [
      ["token", "rotate-key", "--home", keyless],
      ["token", "retire-key", "k1", "--home", keyless],
      ["token", "retire-key", "k1", "--home", join(work, "no-such-home")],
    ]) {
      const r = kpipBounded(args);
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.out}${r.err}`);
      assert.match(r.err, /token key file .*token-keys\.json cannot be read|no kernel home/, args.join(" "));
      assert.doesNotMatch(r.err, /internal error|\n\s+at /);
    }
    assert.throws(() => statSync(join(keyless, "token-keys.json")), /ENOENT/, "no key file made");
    const unknown = kpipBounded(["token", "retire-key", "k\u009b2J\u202e", ...h]);
    assert.equal(unknown.code, 2, unknown.err);
    assert.match(unknown.err, /no root key "k\\u\{9b\}2J\\u\{202e\}"/);
  });

  it("kpip kernel shows a setting's value from config.json or KPIP_* escaped when it refuses it: a C1 CSI or a bidi override does not reach the terminal", () => {
    const tampered = join(work, "tampered-home");
    mkdirSync(tampered, { mode: 0o700 });
    const value = "info\u009b2J\u202egnp.live";
    writeFileSync(join(tampered, "config.json"), JSON.stringify({ logLevel: value }), { mode: 0o600 });
    const fromFile = kpipBounded(["kernel", "--home", tampered]);
    const empty = join(work, "empty-config.json");
    writeFileSync(empty, "{}", { mode: 0o600 });
    const fromEnv = kpipBounded(["kernel", "--home", tampered, "--config", empty], "", { KPIP_LOG_LEVEL: value });
    for (const [what, r] of [
      ["config.json", fromFile],
      ["KPIP_LOG_LEVEL", fromEnv],
    ] as const) {
      assert.equal(r.code, 2, `${what}: ${r.out}${r.err}`);
      assert.match(r.err, /logLevel/, what);
      assert.doesNotMatch(r.err, /[\u0080-\u009f\u202a-\u202e]/, `${what}: no raw C1 control nor bidi override`);
      assert.match(r.err, /\\u\{9b\}2J/, what);
    }
  });

  it("kpip kernel refuses to start on a token key file that is not JSON, not the kernel's JSON or a FIFO, naming the file, what it held escaped, exit 2", () => {
    const cases: [string, (path: string) => void, RegExp][] = [
      ["bad JSON", (p) => writeFileSync(p, '{"current": "\u009b2J\u202e', { mode: 0o600 }), /is not JSON/],
      ["a FIFO", (p) => execFileSync("mkfifo", ["-m", "600", p]), /not a regular file/],
      ["no current key", (p) => writeFileSync(p, '{"current": "k1", "keys": {}}', { mode: 0o600 }), /names a current key/],
    ];
    for (const [what, make, re] of cases) {
      const keysHome = mkdtempSync(join(work, "keys-home-"));
      make(join(keysHome, "token-keys.json"));
      const r = kpipBounded(["kernel", "--home", keysHome, "--log-level", "silent"]);
      assert.equal(r.signal, null, `${what}: killed (${r.signal}): it blocked`);
      assert.equal(r.code, 2, `${what}: ${r.out}${r.err}`);
      assert.match(r.err, /^kpip kernel: token key file .*token-keys\.json/, what);
      assert.match(r.err, re, what);
      assert.doesNotMatch(r.err, /[\u0080-\u009f\u202a-\u202e]|internal error|\n\s+at /, what);
    }
  });

  it("a token file or KPIP_TOKEN that holds no token is a usage error (exit 2), not a kernel's FAILURE (exit 1)", () => {
    const notToken = join(work, "not-a.token");
    writeFileSync(notToken, "root:$6$salt$hash:19000:0:99999:7:::\n");
    for (const [what, r] of [
      ["--token @file", kpip(["call", "system.health", "--token", `@${notToken}`, ...h])],
      ["KPIP_TOKEN", kpip(["call", "system.health", ...h], { KPIP_TOKEN: "bm90IGEgdG9rZW4" })],
      ["status --token @file", kpip(["status", "--token", `@${notToken}`, ...h])],
    ] as const) {
      assert.equal(r.code, 2, `${what}: ${r.out}${r.err}`);
      assert.match(r.err, /token 1 is not a token/, what);
    }
  });

  it("persona remove of a__b never tells the operator to delete a/b's identity file (both ids' default name): a key still registered; persona create a__b says whose file it is", () => {
    const created = kpip(["persona", "create", "dup/b", "--json", ...h]);
    assert.equal(created.code, 0, created.err);
    const file = JSON.parse(created.out).identity as string;
    // a__b is another persona, registered with a key of its own.
    const other = join(work, "dup__b.identity");
    assert.equal(kpip(["persona", "create", "dup__b", "--out", other, ...h]).code, 0);
    const taken = kpip(["persona", "create", "dup__c", ...h]);
    assert.equal(taken.code, 0, taken.err);
    const again = kpip(["persona", "create", "dup__b", ...h]);
    assert.equal(again.code, 1);
    assert.match(again.err, /taken by persona dup\/b's identity/);
    const removed = kpip(["persona", "remove", "dup__b", "--json", ...h]);
    assert.equal(removed.code, 0, removed.err);
    assert.equal(JSON.parse(removed.out).identityFile, null, "dup/b's file is not dup__b's leftover");
    const human = kpip(["persona", "remove", "dup__c", ...h]);
    assert.match(human.out, /dup__c\.identity is left in place/, "a persona's own leftover is still named");
    assert.doesNotMatch(kpip(["persona", "remove", "dup", ...h]).out, /left in place/);
    assert.ok(statSync(file).isFile());
  });

  it("an empty KPIP_HOME or KPIP_SOCKET is unset, as for the kernel: never the current directory's home; an empty --home, --socket or --identity is a usage error", () => {
    // The current directory holds a kernel.db (here a damaged one, so that reading it shows).
    const decoy = join(work, "decoy-home");
    mkdirSync(decoy, { mode: 0o700 });
    writeFileSync(join(decoy, "kernel.db"), Buffer.alloc(8192, 0x5a), { mode: 0o600 });
    const xdg = join(work, "xdg");
    const inDecoy = (args: string[], env: NodeJS.ProcessEnv) => {
      const r = spawnSync(process.execPath, [MAIN, ...args], {
        cwd: decoy,
        encoding: "utf8",
        env: { ...process.env, XDG_STATE_HOME: xdg, ...env },
      });
      return { code: r.status, out: r.stdout, err: r.stderr };
    };
    // `KPIP_HOME="$UNSET" kpip …`: the default home, as `kpip kernel` takes it — not the current directory.
    for (const args of [
      ["persona", "list"],
      ["audit", "tail"],
      ["token", "rotate-key"],
    ]) {
      const r = inDecoy(args, { KPIP_HOME: "" });
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.out}${r.err}`);
      assert.ok(r.err.includes(`no kernel home at ${join(xdg, "kpip")}`), `${args.join(" ")}: ${r.err}`);
    }
    const health = inDecoy(["call", "system.health", "kernel://"], { KPIP_HOME: home, KPIP_SOCKET: "" });
    assert.equal(health.code, 0, `${health.out}${health.err}`);
    for (const flag of ["--home", "--socket", "--identity"]) {
      const r = inDecoy(["call", "system.health", "kernel://", ...(flag === "--home" ? [] : h), flag, ""], {});
      assert.equal(r.code, 2, `${flag}: ${r.out}${r.err}`);
      assert.match(r.err, new RegExp(`${flag} must not be empty`));
    }
  });

  it("token retire-key while another change of the key file holds its lock (a rotation in progress) is refused, never run over the other's read: a retired key is not made valid again by the other's write", () => {
    const keysPath = join(home, "token-keys.json");
    const read = () =>
      JSON.parse(readFileSync(keysPath, "utf8")) as { current: string; keys: Record<string, { retired?: number }> };
    const r1 = kpip(["token", "rotate-key", "--json", ...h]);
    assert.equal(r1.code, 0, r1.err);
    const leaked = read().current;
    assert.equal(kpip(["token", "rotate-key", ...h]).code, 0);
    // Another kpip rotating the keys holds the key file's lock, having read the file.
    const lock = new Database(join(home, "token-keys.lock"), { timeout: 0 });
    lock.exec("BEGIN EXCLUSIVE");
    const seen = read();
    const retire = kpipBounded(["token", "retire-key", leaked, ...h]);
    // The rotation writes what it read plus its new key, and releases the lock.
    seen.keys.rotatedmeanwhile = { key: "A".repeat(43), created: Date.now() } as never;
    seen.current = "rotatedmeanwhile";
    writeFileSync(`${keysPath}.new`, `${JSON.stringify(seen, null, 2)}\n`, { mode: 0o600 });
    renameSync(`${keysPath}.new`, keysPath);
    lock.exec("ROLLBACK");
    lock.close();
    // The retirement did not run over the rotation's read: it was refused, and is made again now.
    assert.equal(retire.code, 2, `${retire.out}${retire.err}`);
    assert.match(retire.err, /another change of the token key file is in progress/);
    assert.equal(kpip(["token", "retire-key", leaked, ...h]).code, 0);
    const after = read();
    assert.ok(after.keys[leaked]?.retired, "the leaked key stays retired");
    assert.equal(after.current, "rotatedmeanwhile", "the rotation is kept");
  });
});

/** `kpip <args>` run without blocking this process (a fake kernel here must answer it). */
function kpipAsync(args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  const c = spawn(process.execPath, [MAIN, ...args], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  c.stdout.on("data", (d: Buffer) => {
    out += d;
  });
  c.stderr.on("data", (d: Buffer) => {
    err += d;
  });
  return new Promise((r) => c.once("close", (code) => r({ code, out, err })));
}

/** A kernel that welcomes anyone and answers each request with `answer`'s payload: what a faulty (or fake) kernel may say. */
async function fakeKernel(dir: string, answer: (op: string) => CborValue): Promise<{ socket: string; close(): void }> {
  const socket = join(dir, "fake.sock");
  const server = createServer((s) => {
    const d = new FrameDecoder();
    s.on("error", () => {});
    s.on("data", (chunk) => {
      for (const f of d.push(chunk)) {
        const m = decodeMessage(f);
        if (m.type === "HELLO")
          s.write(
            encodeMessage({
              type: "CHALLENGE",
              body: {
                version: 1,
                session: "s1",
                nonce: Buffer.alloc(32),
                kernel: "fake",
                heartbeatMs: 5000,
                limits: { maxBody: 1 << 20, maxInFlight: 16, dedupeWindowMs: 1000 },
                features: [],
              },
            }),
          );
        else if (m.type === "ATTEST") s.write(encodeMessage({ type: "WELCOME", body: { persona: "alice", handles: [] } }));
        else if (m.type === "REQUEST") {
          const op = decodeIntent(m.body.intent).op;
          const body = { version: 1, id: m.body.id, status: "SUCCESS", payload: answer(op) } as Response;
          s.write(encodeMessage({ type: "RESPONSE", body }, f.stream));
        } else if (m.type === "GOODBYE") s.end(encodeMessage({ type: "GOODBYE", body: { reason: "bye" } }));
      }
    });
  });
  await new Promise<void>((r) => server.listen(socket, r));
  return { socket, close: () => server.close() };
}

describe("kpip against a faulty kernel", () => {
  it("token list and token mint show an expiry no date can hold (a faulty kernel's) as the number it is: no RangeError, the rest of the answer shown", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-fake-kernel-"));
    const EXP = 9_000_000_000_000_000; // a safe integer, past the last date a Date holds (8.64e15 ms)
    const fake = await fakeKernel(dir, (op): CborValue => {
      if (op === "token.list")
        return { tokens: [{ id: "t1", sub: "alice", chain: [], exp: EXP, mintedBy: "admin", createdAt: 0 }] };
      return { token: Buffer.from("not a real token"), id: "t2", exp: EXP };
    });
    try {
      const identity = join(dir, "alice.identity");
      writeFileSync(identity, serializeIdentity(generateIdentity("alice")), { mode: 0o600 });
      const h = ["--home", join(dir, "home"), "--socket", fake.socket, "--identity", identity];
      const list = await kpipAsync(["token", "list", ...h]);
      assert.equal(list.code, 0, list.err);
      assert.match(list.out, /^t1\s+alice\s+valid\s+9000000000000000\s+admin$/m);
      const mint = await kpipAsync(mintArgs("alice", "system.*:kernel://", "--json", ...h));
      assert.equal(mint.code, 0, mint.err);
      assert.equal(JSON.parse(mint.out).exp, "9000000000000000");
    } finally {
      fake.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
