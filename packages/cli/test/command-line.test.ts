import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { once } from "node:events";
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { generateIdentity, serializeIdentity } from "@kpip/protocol";
import { CommandWorker } from "@kpip/protocol/testing";
import { helpText, runCommand } from "../src/command.js";
import { loadCommands } from "../src/commands/index.js";
import { DISPATCH, kpip, MAIN } from "./run.js";

describe("kpip completion", () => {
  it("bash: completes commands, subcommands after global flags, and a command's flags", () => {
    const script = kpip(["completion", "bash"]);
    assert.equal(script.code, 0);
    const complete = (words: string[]) =>
      spawnSync(
        "bash",
        [
          "-c",
          `eval "$1"; COMP_WORDS=(${words.map((w) => `'${w}'`).join(" ")}); COMP_CWORD=${words.length - 1}; _kpip; echo "\${COMPREPLY[@]}"`,
          "_",
          script.out,
        ],
        { encoding: "utf8" },
      ).stdout.trim();
    assert.equal(complete(["kpip", "tok"]), "token");
    assert.equal(complete(["kpip", "--home", "x", "token", "mi"]), "mint");
    assert.equal(complete(["kpip", "call", "--dead"]), "--deadline-ms");
    assert.equal(complete(["kpip", "audit", "ti"]), "timeline");
    assert.equal(complete(["kpip", "audit", "tok"]), "tokens");
    assert.equal(complete(["kpip", "audit", "--for"]), "--format");
    assert.equal(kpip(["completion", "fish"]).code, 2);
  });
});

describe("bad command lines", () => {
  const home = mkdtempSync(join(tmpdir(), "kpip-cli-bad-"));
  after(() => rmSync(home, { recursive: true, force: true }));
  const h = ["--home", home];
  writeFileSync(join(home, "typo.json"), JSON.stringify({ maxSesions: 7 }));
  const cases: [string, string[], number, RegExp?][] = [
    ["no command", [], 2],
    ["unknown command", ["frobnicate"], 2, /unknown command/],
    ["call without op", ["call", ...h], 2, /missing <op>/],
    ["unknown flag", ["call", "system.health", "--frob", ...h], 2, /--help/],
    ["--args not JSON", ["call", "x.y", "--args", "{", ...h], 2, /not valid JSON/],
    ["--args an array", ["call", "x.y", "--args", "[1]", ...h], 2, /JSON object/],
    ["--args with a float", ["call", "x.y", "--args", '{"a":0.5}', ...h], 2, /integers/],
    ["--data with --data-file", ["call", "x.y", "--data", "a", "--data-file", "/etc/hostname", ...h], 2, /not both/],
    ["unreadable --data-file", ["call", "x.y", "--data-file", "/nonexistent/file", ...h], 2, /cannot read/],
    ["bad --deadline-ms", ["call", "x.y", "--deadline-ms", "abc", ...h], 2, /--deadline-ms must be a positive integer/],
    [
      "an identity file that is not one",
      ["call", "system.health", "--socket", join(home, "none.sock"), "--identity", "/dev/null", ...h],
      2,
      /identity/,
    ],
    ["invalid persona id", ["persona", "create", "Bad Id", ...h], 2, /invalid persona id/],
    ["persona add without key", ["persona", "add", "x", ...h], 2, /needs --public-key/],
    ["persona on a missing home", ["persona", "list", "--home", join(home, "missing")], 2, /no kernel home/],
    ["bad --since", ["audit", "query", "--since", "yesterdayish", ...h], 2, /--since must be an ISO time/],
    ["bad --status", ["audit", "query", "--status", "MAYBE", ...h], 2, /--status must be SUCCESS/],
    ["tail -n 0", ["audit", "tail", "-n", "0", ...h], 2, /-n must be a positive integer \(got "0"\)/],
    ["bad --allow", ["token", "mint", "--persona", "a", "--allow", "nope", "--ttl", "1h", ...h], 2, /OPS:TARGETS/],
    ["bad --ttl", ["token", "mint", "--persona", "a", "--allow", "x.y:kernel://", "--ttl", "soon", ...h], 2, /duration/],
    [
      "bad --limit",
      ["token", "mint", "--persona", "a", "--allow", "x.y:kernel://", "--ttl", "1h", "--limit", "x", ...h],
      2,
      /--limit "x" must look like name=value/,
    ],
    ["revoke without id", ["token", "revoke", ...h], 2, /needs a token id/],
    [
      "a single-value option given twice",
      ["token", "mint", "--persona", "a", "--persona", "b", "--allow", "x.y:kernel://", "--ttl", "1h", ...h],
      2,
      /--persona is given more than once/,
    ],
    [
      "--home before the command and after it",
      ["--home", home, "status", "--home", join(home, "other")],
      2,
      /--home is given more than once/,
    ],
    ["a target that is not a URI", ["call", "storage.read", "not a uri", ...h], 2, /"not a uri" is not a target URI/],
    ["a stray word where the target goes", ["call", "system.health", "extra", ...h], 2, /"extra" is not a target URI/],
    ["an op that is not an op name", ["call", "Health", ...h], 2, /"Health" is not an op name/],
    ["persona rm", ["persona", "rm", "x", ...h], 2, /unknown persona command "rm" — did you mean "remove"\?/],
    ["ops with a typo", ["ops", "cancle", "op://x", ...h], 2, /did you mean "cancel"\?/],
    ["attenuating garbage", ["token", "attenuate", "@/etc/hostname", "--ttl", "1m", ...h], 2, /not a token/],
    [
      "--max-lifetime shorter than --ttl",
      ["token", "mint", "--persona", "a", "--allow", "x.y:kernel://", "--ttl", "1h", "--max-lifetime", "30m", ...h],
      2,
      /shorter than --ttl/,
    ],
    ["kernel --log-level loud", ["kernel", "--log-level", "loud", "--home", join(home, "loud")], 2, /logLevel must be one of/],
    [
      "kernel --metrics-listen nonsense",
      ["kernel", "--metrics-listen", "nonsense", "--home", join(home, "nonsense")],
      2,
      /metricsListen must be host:port/,
    ],
    ["call with no kernel home", ["call", "system.health", "--home", join(home, "never")], 3, /no kernel home at/],
    [
      "a usage error under --json is one JSON line",
      ["call", "storage.read", "not a uri", "--json", ...h],
      2,
      /^\{"error":"UsageError","message":"\\"not a uri\\" is not a target URI/,
    ],
    ["kernel with a bad integer", ["kernel", "--max-sessions", "abc", ...h], 2, /max-sessions/],
    // --config is read, not ignored: a missing file and one with an unknown setting are refused
    [
      "kernel --config naming a missing file",
      ["kernel", "--config", join(home, "no-such.json"), "--home", join(home, "cfg1")],
      2,
      /config file .*no-such\.json cannot be read/,
    ],
    [
      "kernel --config with an unknown setting",
      ["kernel", "--config", join(home, "typo.json"), "--home", join(home, "cfg2")],
      2,
      /unknown setting "maxSesions"/,
    ],
  ];
  it("every single-value option of every command given twice is a usage error naming it", async () => {
    const write = process.stderr.write;
    let err = "";
    process.stderr.write = ((s: string) => {
      err += s;
      return true;
    }) as typeof process.stderr.write;
    try {
      let checked = 0;
      for (const c of await loadCommands())
        for (const [name, o] of Object.entries(c.options)) {
          if (o.type !== "string" || o.multiple) continue;
          err = "";
          // Refused before the command runs: nothing here reaches a kernel or a file.
          const code = await runCommand(c, [`--${name}`, "a", `--${name}`, "b"]);
          assert.equal(code, 2, `kpip ${c.name} --${name} twice: ${err}`);
          assert.match(err, new RegExp(`--${name} is given more than once`));
          checked++;
        }
      assert.ok(checked > 20, `${checked} options`);
    } finally {
      process.stderr.write = write;
    }
  });

  // Each is refused before it reaches a kernel: one worker runs them all, not a process each (the
  // installed entry's own dispatch and exit codes are bundle.test's and the cases below).
  const cli = new CommandWorker(DISPATCH);
  after(() => cli.close());
  for (const [name, args, code, re] of cases) {
    it(`${name} → exit ${code}`, async () => {
      const r = await cli.run(args);
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
    assert.match(r.err, /no kernel at .*\n.*start one with `kpip kernel`/);
  });

  it("a listener that takes the connection and never answers the handshake exits 3 (kernel unavailable), not 1", async () => {
    const idFile = join(home, "y.identity");
    writeFileSync(idFile, serializeIdentity(generateIdentity("y")));
    const sock = join(home, "mute.sock");
    const held: Socket[] = [];
    const mute = createServer((s) => held.push(s));
    await new Promise<void>((ok) => mute.listen(sock, ok));
    try {
      const child = spawn(process.execPath, [MAIN, "call", "system.health", "--socket", sock, "--identity", idFile], {
        stdio: ["ignore", "pipe", "pipe"],
      });
      let err = "";
      child.stderr.on("data", (d: Buffer) => {
        err += d.toString();
      });
      const [code] = (await once(child, "exit")) as [number | null];
      assert.ok(held.length > 0, "the command reached the listener");
      assert.equal(code, 3, err);
      assert.match(err, /no kernel answered at .*mute\.sock/);
    } finally {
      for (const s of held) s.destroy();
      mute.close();
    }
  });

  it("docs/cli.md is generated from the current command definitions", async () => {
    const doc = readFileSync(fileURLToPath(new URL("../../../../docs/cli.md", import.meta.url)), "utf8");
    for (const c of await loadCommands())
      assert.ok(doc.includes(helpText(c).trimEnd()), `docs/cli.md is stale for ${c.name}: run node scripts/gen-cli-doc.mjs`);
  });

  for (const cmd of ["kernel", "persona", "token", "call", "agents", "ops", "events", "audit", "status"]) {
    it(`kpip ${cmd} --help shows an example`, async () => {
      const r = await cli.run([cmd, "--help"]);
      assert.equal(r.code, 0);
      assert.match(r.out, /example:/);
    });
  }
});
