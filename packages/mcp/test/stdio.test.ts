import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { after, before, describe, it } from "node:test";
import type { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { type CallToolResult, ErrorCode } from "@modelcontextprotocol/sdk/types.js";
import { HOST_BUSY } from "../src/host-budget.js";
import { HOST, KernelHome, kpip, MAIN, mcpError, stdioHost, text, until } from "./harness.js";

/** The narrow token of the walkthrough: storage in ws1, the op table, commands and their follow-up. */
const RIGHTS = [
  { ops: ["system.describe"], targets: ["kernel://"] },
  { ops: ["storage.read", "storage.write", "storage.list"], targets: ["obj://ws1/**"] },
  { ops: ["compute.submit", "op.status", "op.result", "op.cancel"], targets: ["op://**"] },
  { ops: ["event.subscribe", "event.unsubscribe"], targets: ["topic://kernel/personas/alice/ops/*"] },
];
const EXPECTED_TOOLS = [
  "compute_submit",
  // event.subscribe/unsubscribe are granted but not tools: their slots would outlive the host.
  "op_cancel",
  "op_result",
  "op_status",
  "storage_list",
  "storage_read",
  // Allowed by storage.write: the kernel authorizes an upload as the write it becomes.
  "storage_upload_abort",
  "storage_upload_begin",
  "storage_upload_chunk",
  "storage_upload_commit",
  "storage_write",
  "system_describe",
];

const call = (c: Client, name: string, args: unknown, opts: Parameters<Client["callTool"]>[2] = {}) =>
  c.callTool({ name, arguments: args as Record<string, unknown> }, undefined, opts) as Promise<CallToolResult>;

describe("kpip mcp over stdio, driven by the MCP SDK's own client", () => {
  const k = new KernelHome();
  let host: Client;
  let files: { identityFile: string; tokenFile: string };
  before(async () => {
    await k.start();
    files = await k.persona("alice", RIGHTS);
    host = await stdioHost(k, files, ["--max-args-bytes", "4096"]);
  });
  after(async () => {
    await host?.close().catch(() => {});
    await k.dispose();
  });

  it("lists exactly the ops the token grants, each with a schema and a description", async () => {
    const { tools } = await host.listTools();
    assert.deepEqual(tools.map((t) => t.name).sort(), EXPECTED_TOOLS);
    const write = tools.find((t) => t.name === "storage_write");
    assert.ok(write?.description?.includes("storage.write"));
    assert.ok(write);
    const args = (write.inputSchema.properties as { args: { required: string[]; properties: Record<string, unknown> } }).args;
    assert.deepEqual(args.required, ["data"]);
    assert.match(JSON.stringify(write.inputSchema.properties), /obj:\/\/ws1\/\*\*/, "the schema names where the token allows it");
    assert.deepEqual(write.inputSchema.required, ["target", "args"]);
  });

  it("round-trips storage.write then storage.read, text and bytes", async () => {
    const w = await call(host, "storage_write", { target: "obj://ws1/notes/a", args: { data: "hello from a host" } });
    assert.equal(w.isError, undefined, text(w));
    assert.equal(JSON.parse(text(w)).status, "SUCCESS");
    const r = await call(host, "storage_read", { target: "obj://ws1/notes/a" });
    const res = r.content.find((c) => c.type === "resource");
    assert.deepEqual(res?.type === "resource" && res.resource, {
      uri: "obj://ws1/notes/a",
      mimeType: "text/plain",
      text: "hello from a host",
    });
    const bin = Buffer.from([0, 1, 2, 255]);
    await call(host, "storage_write", { target: "obj://ws1/bin", args: { data: { $bytes: bin.toString("base64") } } });
    const rb = await call(host, "storage_read", { target: "obj://ws1/bin" });
    assert.equal(JSON.parse(text(rb)).payload.data.$bytes, bin.toString("base64"));
    const blob = rb.content.find((c) => c.type === "resource");
    assert.ok(blob?.type === "resource" && "blob" in blob.resource);
    assert.equal(blob.resource.mimeType, "application/octet-stream");
  });

  it("returns a PARTIAL answer as a result with its status and cursor, not as an error", async () => {
    const r = await call(host, "storage_list", { target: "obj://ws1", args: { limit: 1 } });
    assert.equal(r.isError, undefined, text(r));
    const out = JSON.parse(text(r));
    assert.equal(out.status, "PARTIAL");
    assert.equal(out.payload.items.length, 1);
    assert.equal(typeof out.payload.cursor, "string");
    assert.equal((r._meta as Record<string, unknown>)["kpip/status"], "PARTIAL");
  });

  it("lists and reads storage as MCP resources within the grant", async () => {
    await call(host, "storage_write", { target: "obj://ws1/notes/b", args: { data: "b" } });
    const { resources } = await host.listResources();
    assert.ok(resources.some((r) => r.uri === "obj://ws1/notes/b"));
    const read = await host.readResource({ uri: "obj://ws1/notes/b" });
    assert.deepEqual(
      read.contents.map((c) => ("text" in c ? c.text : null)),
      ["b"],
    );
    const e = await mcpError(host.readResource({ uri: "obj://ws2/secret" }));
    assert.match(e.message, /PERMISSION/);
  });

  it("answers a call outside the grant with a tool error carrying PERMISSION, as the kernel decided", async () => {
    const r = await call(host, "storage_write", { target: "obj://ws2/x", args: { data: "nope" } });
    assert.equal(r.isError, true);
    assert.match(text(r), /^FAILURE PERMISSION: /);
    assert.equal((r._meta as Record<string, unknown>)["kpip/errorClass"], "PERMISSION");
  });

  it("refuses bad input from the host with an MCP error, and the kernel is never asked", async () => {
    const before = (await k.audit("alice")).length;
    const unknown = await mcpError(call(host, "token_mint", { target: "persona://alice" }));
    assert.equal(unknown.code, ErrorCode.InvalidParams);
    assert.match(unknown.message, /unknown tool "token_mint"/);
    const missing = await mcpError(call(host, "storage_write", { target: "obj://ws1/x" }));
    assert.match(missing.message, /args\.data is required/);
    const typed = await mcpError(call(host, "storage_write", { target: "obj://ws1/x", args: { data: "x", ifGeneration: -1 } }));
    assert.match(typed.message, /ifGeneration must be an unsigned integer/);
    const extra = await mcpError(call(host, "storage_read", { target: "obj://ws1/x", args: { evil: 1 } }));
    assert.match(extra.message, /takes no argument "evil"/);
    const scheme = await mcpError(call(host, "storage_read", { target: "agent://x/y" }));
    assert.match(scheme.message, /targets of scheme obj:\/\//);
    const big = await mcpError(call(host, "storage_write", { target: "obj://ws1/big", args: { data: "x".repeat(8000) } }));
    assert.equal(big.code, ErrorCode.InvalidParams);
    assert.match(big.message, /exceed the gateway's limit of 4096 bytes/);
    assert.equal((await k.audit("alice")).length, before, "no request reached the kernel");
  });

  it("reports a DEFERRED command's progress, then its result", async () => {
    const progress: string[] = [];
    const r = await call(
      host,
      "compute_submit",
      { target: "op://command/sh", args: { args: ["-c", "echo computed"] } },
      { onprogress: (p) => void progress.push(p.message ?? "") },
    );
    assert.equal(r.isError, undefined, text(r));
    assert.ok(progress.length >= 1, "at least one progress notification");
    assert.match(progress[0] as string, /^op:\/\/[0-9a-f]{32} deferred$/);
    const out = JSON.parse(text(r));
    assert.equal(out.status, "SUCCESS");
    assert.equal(out.payload.state, "succeeded");
    assert.equal(Buffer.from(out.payload.result.stdout.$bytes, "base64").toString(), "computed\n");
  });

  it("hands the host a failed command's exit code and output with its FAILURE, as op.result gives them", async () => {
    const r = await call(host, "compute_submit", {
      target: "op://command/sh",
      args: { args: ["-c", "echo partial; echo broken >&2; exit 3"] },
    });
    assert.equal(r.isError, true);
    assert.match(text(r), /^FAILURE [A-Z]+: /, "the class and message first, as for any failure");
    const detail = r.content.filter((c) => c.type === "text")[1];
    assert.ok(detail?.type === "text", JSON.stringify(r.content));
    const out = JSON.parse(detail.text);
    assert.equal(out.status, "FAILURE");
    assert.equal(out.error, r._meta?.["kpip/errorClass"]);
    assert.equal(out.payload.state, "failed");
    assert.equal(out.payload.result.exitCode, 3);
    assert.equal(Buffer.from(out.payload.result.stdout.$bytes, "base64").toString(), "partial\n");
    assert.equal(Buffer.from(out.payload.result.stderr.$bytes, "base64").toString(), "broken\n");
    const streams = r.content.filter((c) => c.type === "resource").map((c) => (c.type === "resource" ? c.resource : undefined));
    assert.deepEqual(
      streams.map((x) => [x?.uri.replace(/^op:\/\/[0-9a-f]+/, "op://ID"), x && "text" in x ? x.text : undefined]),
      [
        ["op://ID#/result/stderr", "broken\n"],
        ["op://ID#/result/stdout", "partial\n"],
      ],
      "each stream also as a resource, as a success's bytes are",
    );
  });

  it("kpip mcp --max-calls bounds the calls one host has running: one more is refused, retryable, until one ends", async () => {
    const one = await stdioHost(k, files, ["--max-calls", "1"]);
    try {
      const ac = new AbortController();
      let running = false;
      const long = call(
        one,
        "compute_submit",
        { target: "op://command/sleep", args: { args: ["120"] } },
        {
          signal: ac.signal,
          onprogress: () => {
            running = true;
          },
        },
      );
      long.catch(() => {});
      await until(() => running, 60_000, "the long call running");
      const e = await mcpError(call(one, "system_describe", { target: "kernel://" }));
      assert.equal(e.code, HOST_BUSY, e.message);
      ac.abort();
      const servedAgain = async () => {
        const r = await call(one, "system_describe", { target: "kernel://" }).catch(() => undefined);
        return r !== undefined && !r.isError;
      };
      await until(servedAgain, 60_000, "served again once the long call ended");
    } finally {
      await one.close().catch(() => {});
    }
  });

  it("turns the host's cancellation into op.cancel", async () => {
    const ac = new AbortController();
    let op = "";
    const pending = call(
      host,
      "compute_submit",
      { target: "op://command/sleep", args: { args: ["120"] } },
      {
        signal: ac.signal,
        onprogress: (p) => {
          op = /^(op:\/\/[0-9a-f]{32})/.exec(p.message ?? "")?.[1] ?? op;
          if (op) ac.abort();
        },
      },
    );
    await assert.rejects(pending, (e: unknown) => e instanceof Error && /abort|cancel/i.test(`${e.name} ${e.message}`));
    assert.ok(op, "progress named the op");
    await until(
      async () => (await k.audit("alice")).some((a) => a.op === "op.cancel" && a.target === op && a.status === "SUCCESS"),
      60_000,
      "op.cancel",
    );
    // The op ended cancelled: seen through the same door, by the host, with a tool call.
    const st = await until(async () => {
      const s = JSON.parse(text(await call(host, "op_status", { target: op })));
      return s.payload.state === "cancelled" ? s : undefined;
    });
    assert.equal(st.payload.state, "cancelled");
  });

  it("records every call in the audit log with the host's name (context.execution)", async () => {
    const rows = await k.audit("alice");
    for (const [op, target] of [
      ["storage.write", "obj://ws1/notes/a"],
      ["storage.read", "obj://ws1/notes/a"],
      ["storage.write", "obj://ws2/x"],
      ["compute.submit", "op://command/sh"],
    ]) {
      const mine = rows.filter((r) => r.op === op && r.target === target);
      assert.ok(mine.length > 0, `${op} ${target} is in the audit`);
      // The gateway sends context.execution = mcp[s<n>]:<host>/<version>#<MCP request id> on every tool call.
      for (const r of mine) assert.match(String(r.execution), new RegExp(`^mcp\\[s1\\]:${HOST.name}/${HOST.version}#\\d+$`));
    }
  });

  it("tells the host at once while the kernel is down, and recovers after it restarts", async () => {
    await k.kill();
    const down = await call(host, "storage_read", { target: "obj://ws1/notes/a" });
    assert.equal(down.isError, true);
    assert.match(text(down), /^FAILURE UNAVAILABLE: the kernel is unavailable/);
    await k.start();
    const back = await until(async () => {
      const r = await call(host, "storage_read", { target: "obj://ws1/notes/a" });
      return r.isError ? undefined : r;
    });
    assert.equal(JSON.parse(text(back)).status, "SUCCESS");
    const { resources } = await host.listResources();
    assert.ok(resources.some((r) => r.uri === "obj://ws1/notes/a"));
  });

  it("answers every request of a host that closed its input right after sending them", () => {
    const lines = [
      {
        jsonrpc: "2.0",
        id: 1,
        method: "initialize",
        params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: HOST },
      },
      { jsonrpc: "2.0", method: "notifications/initialized" },
      {
        jsonrpc: "2.0",
        id: 2,
        method: "tools/call",
        params: { name: "storage_read", arguments: { target: "obj://ws1/notes/a" } },
      },
    ];
    const r = spawnSync(
      process.execPath,
      [MAIN, "mcp", "--home", k.home, "--identity", files.identityFile, "--token", `@${files.tokenFile}`],
      {
        input: lines
          .map((l) => JSON.stringify(l))
          .join("\n")
          .concat("\n"),
        encoding: "utf8",
      },
    );
    assert.equal(r.status, 0, r.stderr);
    const answer = r.stdout
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l))
      .find((m) => m.id === 2);
    assert.equal(JSON.parse(answer.result.content[0].text).status, "SUCCESS");
  });

  it("cancels an op still running when the host closes its input, answers it, and exits", async () => {
    const gw = spawn(
      process.execPath,
      [MAIN, "mcp", "--home", k.home, "--identity", files.identityFile, "--token", `@${files.tokenFile}`],
      { stdio: ["pipe", "pipe", "inherit"] },
    );
    let code: number | null | undefined;
    const exited = new Promise<void>((r) =>
      gw.once("exit", (c) => {
        code = c;
        r();
      }),
    );
    try {
      let out = "";
      gw.stdout.on("data", (d) => {
        out += d;
      });
      const send = (m: unknown) => gw.stdin.write(`${JSON.stringify(m)}\n`);
      send({
        jsonrpc: "2.0",
        id: 1,
        method: "initialize",
        params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: HOST },
      });
      send({ jsonrpc: "2.0", method: "notifications/initialized" });
      send({
        jsonrpc: "2.0",
        id: 2,
        method: "tools/call",
        params: {
          name: "compute_submit",
          arguments: { target: "op://command/sh", args: { args: ["-c", "sleep 600"] } },
          _meta: { progressToken: "p" },
        },
      });
      // Once the op runs (its first progress notification), the host goes away.
      await until(() => out.includes('"notifications/progress"'), 60_000, "the op to be deferred");
      gw.stdin.end();
      await until(() => code !== undefined, 60_000, "the gateway to exit");
      assert.equal(code, 0);
      const answer = out
        .split("\n")
        .filter(Boolean)
        .map((l) => JSON.parse(l))
        .find((m) => m.id === 2);
      assert.equal(answer.result.isError, true);
      assert.match(
        answer.result.content[0].text,
        /^FAILURE CANCELLED: op:\/\/[0-9a-f]+ was cancelled as the host closed its input/,
      );
      assert.ok((await k.audit("alice")).some((r) => r.op === "op.cancel" && r.status === "SUCCESS"));
    } finally {
      if (gw.exitCode === null) gw.kill("SIGKILL");
      await exited;
    }
  });

  it("refuses to start without a kernel, and without system.describe in the token", async () => {
    const other = new KernelHome();
    try {
      const none = kpip(["mcp", "--home", other.home, "--identity", files.identityFile, "--token", `@${files.tokenFile}`]);
      assert.equal(none.code, 3, none.err);
      await other.start();
      const f = await other.persona("bob", [{ ops: ["storage.read"], targets: ["obj://ws1/**"] }]);
      const r = kpip(["mcp", "--home", other.home, "--identity", f.identityFile, "--token", `@${f.tokenFile}`]);
      assert.equal(r.code, 1);
      assert.match(r.err, /FAILURE PERMISSION: the gateway's token must allow system\.describe/);
    } finally {
      await other.dispose();
    }
  });
});
