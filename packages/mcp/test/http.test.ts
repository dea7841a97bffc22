import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { request } from "node:http";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { CommandWorker } from "@kpip/protocol/testing";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { type CallToolResult, ResourceUpdatedNotificationSchema } from "@modelcontextprotocol/sdk/types.js";
import { DISPATCH, HOST, KernelHome, MAIN, text, until } from "./harness.js";

const SECRET = "s3cret-for-the-http-gateway-test";
const RIGHTS = [
  { ops: ["system.describe"], targets: ["kernel://"] },
  { ops: ["storage.read", "storage.write"], targets: ["obj://ws1/**"] },
  { ops: ["compute.submit", "op.status", "op.result"], targets: ["op://**"] },
];

/** `kpip mcp --http 127.0.0.1:0`; resolves with the URL it prints once it serves. */
async function serveHttp(k: KernelHome, files: { identityFile: string; tokenFile: string }, bearerFile: string) {
  const child = spawn(
    process.execPath,
    [MAIN, "mcp", "--home", k.home, "--identity", files.identityFile, "--token", `@${files.tokenFile}`].concat([
      "--http",
      "127.0.0.1:0",
      "--bearer",
      `@${bearerFile}`,
    ]),
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  const url = await new Promise<string>((resolve, reject) => {
    let err = "";
    child.stderr?.on("data", (d) => {
      err += d;
      const m = /serving MCP on (http:\/\/\S+)/.exec(err);
      if (m) resolve(m[1] as string);
    });
    child.once("exit", (code) => reject(new Error(`kpip mcp exited (${code}): ${err}`)));
  });
  return { child, url };
}

async function connect(url: string, headers: Record<string, string>, name = HOST.name): Promise<Client> {
  const c = new Client({ name, version: HOST.version });
  await c.connect(new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } }));
  return c;
}

/** A raw request with any Host and headers (fetch will not send a foreign Host). */
function raw(url: string, headers: Record<string, string>): Promise<number> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: u.hostname,
        port: u.port,
        path: u.pathname,
        method: "POST",
        headers: { "content-type": "application/json", ...headers },
      },
      (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      },
    );
    req.once("error", reject);
    req.end(JSON.stringify({ jsonrpc: "2.0", id: 1, method: "initialize", params: {} }));
  });
}

describe("kpip mcp over Streamable HTTP on loopback, with a bearer secret", () => {
  const k = new KernelHome();
  let gw: { child: ChildProcess; url: string };
  const hosts: Client[] = [];
  const auth = { Authorization: `Bearer ${SECRET}` };
  before(async () => {
    await k.start();
    const files = await k.persona("carol", RIGHTS);
    const bearerFile = join(k.home, "mcp.bearer");
    writeFileSync(bearerFile, `${SECRET}\n`, { mode: 0o600 });
    gw = await serveHttp(k, files, bearerFile);
  });
  after(async () => {
    for (const h of hosts) await h.close().catch(() => {});
    if (gw && gw.child.exitCode === null) {
      const exited = new Promise((r) => gw.child.once("exit", r));
      gw.child.kill("SIGTERM");
      await exited;
    }
    await k.dispose();
  });

  it("serves the granted ops as tools, round-trips storage and follows a DEFERRED op, per host session", async () => {
    const a = await connect(gw.url, auth);
    const b = await connect(gw.url, auth, "second-host");
    hosts.push(a, b);
    const { tools } = await a.listTools();
    assert.deepEqual(tools.map((t) => t.name).sort(), [
      "compute_submit",
      "op_result",
      "op_status",
      "storage_read",
      // storage.write allows the upload ops too: the kernel authorizes an upload as the write it becomes.
      "storage_upload_abort",
      "storage_upload_begin",
      "storage_upload_chunk",
      "storage_upload_commit",
      "storage_write",
      "system_describe",
    ]);
    const w = (await a.callTool({
      name: "storage_write",
      arguments: { target: "obj://ws1/h", args: { data: "over http" } },
    })) as CallToolResult;
    assert.equal(w.isError, undefined, text(w));
    const r = (await b.callTool({ name: "storage_read", arguments: { target: "obj://ws1/h" } })) as CallToolResult;
    assert.equal(Buffer.from(JSON.parse(text(r)).payload.data.$bytes, "base64").toString(), "over http");
    const progress: string[] = [];
    const d = (await a.callTool(
      { name: "compute_submit", arguments: { target: "op://command/sh", args: { args: ["-c", "echo via-http"] } } },
      undefined,
      { onprogress: (p) => void progress.push(p.message ?? "") },
    )) as CallToolResult;
    assert.match(progress[0] ?? "", /^op:\/\/[0-9a-f]{32} deferred$/);
    assert.equal(Buffer.from(JSON.parse(text(d)).payload.result.stdout.$bytes, "base64").toString(), "via-http\n");
    const denied = (await a.callTool({
      name: "storage_write",
      arguments: { target: "obj://ws9/x", args: { data: "x" } },
    })) as CallToolResult;
    assert.equal(denied.isError, true);
    assert.match(text(denied), /^FAILURE PERMISSION/);
    assert.ok(
      (await k.audit("carol")).some((x) => x.op === "storage.write" && x.target === "obj://ws9/x" && x.status === "FAILURE"),
    );
  });

  it("shares one kernel watch between host sessions subscribed to one object; each gets the update", async () => {
    const a = await connect(gw.url, auth);
    const b = await connect(gw.url, auth, "second-host");
    hosts.push(a, b);
    const got: string[] = [];
    for (const [name, h] of [
      ["a", a],
      ["b", b],
    ] as const)
      h.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => void got.push(`${name} ${n.params.uri}`));
    await a.subscribeResource({ uri: "obj://ws1/shared" });
    await b.subscribeResource({ uri: "obj://ws1/shared" });
    await a.callTool({ name: "storage_write", arguments: { target: "obj://ws1/shared", args: { data: "1" } } });
    await until(() => got.length >= 2, 30_000, "both hosts' updates");
    assert.deepEqual(got.sort(), ["a obj://ws1/shared", "b obj://ws1/shared"]);
    const watches = async () =>
      (await k.audit("carol")).filter(
        (x) => x.target === "obj://ws1/shared" && x.op?.startsWith("storage.") && x.op.endsWith("watch"),
      );
    assert.deepEqual(
      (await watches()).map((x) => `${x.op} ${x.status}`),
      ["storage.watch SUCCESS"],
      "one kernel watch for two host sessions",
    );
    // The last session to leave ends the watch.
    await a.unsubscribeResource({ uri: "obj://ws1/shared" });
    await b.unsubscribeResource({ uri: "obj://ws1/shared" });
    await until(
      async () => (await watches()).some((x) => x.op === "storage.unwatch" && x.status === "SUCCESS"),
      30_000,
      "storage.unwatch",
    );
  });

  it("refuses a host without the bearer secret, with a wrong one, or through a foreign Host or Origin", async () => {
    await assert.rejects(connect(gw.url, {}), /401|bearer/i);
    await assert.rejects(connect(gw.url, { Authorization: "Bearer not-the-secret-at-all" }), /401|bearer/i);
    const port = new URL(gw.url).port;
    assert.equal(await raw(gw.url, { ...auth, host: `evil.example:${port}` }), 403, "DNS rebinding: foreign Host");
    assert.equal(await raw(gw.url, { ...auth, origin: "https://evil.example" }), 403, "a web page's Origin");
    assert.equal(await raw(gw.url, { origin: `http://127.0.0.1:${port}` }), 401, "same origin, still no secret");
    assert.equal((await k.audit("carol")).filter((x) => x.op === "storage.read").length, 1, "nothing more reached the kernel");
  });

  it("listens on loopback only and will not start without a secret", async () => {
    // Refusals only, each before the gateway connects: one worker runs them all, not a process each.
    const cli = new CommandWorker(DISPATCH);
    const kpip = (args: string[]) => cli.run(args);
    try {
      const home = ["--home", k.home, "--identity", join(k.home, "carol.identity"), "--token", `@${join(k.home, "carol.token")}`];
      const bearer = ["--bearer", `@${join(k.home, "mcp.bearer")}`];
      const wide = await kpip(["mcp", ...home, "--http", "0.0.0.0:0", ...bearer]);
      assert.equal(wide.code, 2);
      assert.match(wide.err, /loopback only/);
      const lan = await kpip(["mcp", ...home, "--http", "192.168.1.10:8787", ...bearer]);
      assert.equal(lan.code, 2);
      const none = await kpip(["mcp", ...home, "--http", "127.0.0.1:0"]);
      assert.equal(none.code, 2);
      assert.match(none.err, /needs a bearer secret/);
      for (const flag of ["--max-sessions", "--max-total-body-bytes", "--body-timeout-ms"]) {
        for (const n of ["0", "-3", "many", "1.5"]) {
          const bad = await kpip(["mcp", ...home, "--http", "127.0.0.1:0", ...bearer, `${flag}=${n}`]);
          assert.equal(bad.code, 2, `${flag} ${n}`);
          assert.match(bad.err, new RegExp(`${flag} must be a positive integer`));
        }
        const stdio = await kpip(["mcp", ...home, flag, "4"]);
        assert.equal(stdio.code, 2);
        assert.match(stdio.err, new RegExp(`${flag} goes with --http`));
      }
      for (const flag of ["--max-calls", "--max-unread-bytes", "--max-total-calls", "--max-total-unread-bytes"]) {
        for (const n of ["0", "-1", "many", "2.5"]) {
          const bad = await kpip(["mcp", ...home, `${flag}=${n}`]);
          assert.equal(bad.code, 2, `${flag} ${n}`);
          assert.match(bad.err, new RegExp(`${flag} must be a positive integer`));
        }
      }
    } finally {
      await cli.close();
    }
  });
});
