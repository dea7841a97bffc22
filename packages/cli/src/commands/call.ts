import { readFileSync } from "node:fs";
import { join } from "node:path";
import { KernelClient } from "@kpip/client";
import type { CborMap } from "@kpip/protocol";
import type { Command } from "../command.js";
import { defaultSocket, EXIT, fromJson, render, reportError, resolveHome, toJson, UsageError } from "../util.js";

export const callCommand: Command = {
  name: "call",
  summary: "send one intent to the kernel and print the answer",
  usage: "kpip call <op> [target] [--args JSON | --data TEXT | --data-file F] [--identity F] [--json]",
  example: "kpip call storage.write obj://ws1/notes/today --data 'hello'",
  options: {
    args: { type: "string", description: 'arguments as JSON ({"$bytes": base64} for bytes)' },
    data: { type: "string", description: "shorthand for args.data as UTF-8 text" },
    "data-file": { type: "string", description: "shorthand for args.data read from a file (bytes)" },
    identity: { type: "string", description: "persona identity file (default <home>/admin.identity)" },
    workspace: { type: "string", description: "workspace for the request context" },
    home: { type: "string", description: "kernel home (default $KPIP_HOME or the XDG state dir)" },
    socket: { type: "string", description: "kernel socket (default <home>/kernel.sock)" },
    "deadline-ms": { type: "string", description: "deadline for the call in milliseconds" },
    json: { type: "boolean", description: "print the response as JSON" },
  },
  async run(v, pos) {
    const [op, target = "kernel://", ...extra] = pos;
    if (!op) throw new UsageError("missing <op>, e.g. system.health");
    if (extra.length) throw new UsageError(`unexpected arguments: ${extra.join(" ")}`);
    let args: CborMap = {};
    if (v.args !== undefined) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(v.args as string);
      } catch {
        throw new UsageError("--args is not valid JSON");
      }
      if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed))
        throw new UsageError("--args must be a JSON object");
      args = fromJson(parsed) as CborMap;
    }
    if (v.data !== undefined && v["data-file"] !== undefined) throw new UsageError("give --data or --data-file, not both");
    if (v.data !== undefined) args.data = v.data as string;
    if (v["data-file"] !== undefined) {
      try {
        args.data = readFileSync(v["data-file"] as string);
      } catch (e) {
        throw new UsageError(`cannot read --data-file: ${(e as Error).message}`);
      }
    }
    let deadlineMs: number | undefined;
    if (v["deadline-ms"] !== undefined) {
      deadlineMs = Number(v["deadline-ms"]);
      if (!Number.isSafeInteger(deadlineMs) || deadlineMs <= 0) throw new UsageError("--deadline-ms must be a positive integer");
    }
    const home = resolveHome(v.home as string | undefined);
    const json = v.json === true;
    let client: KernelClient | undefined;
    try {
      client = await KernelClient.connect({
        socket: (v.socket as string | undefined) ?? defaultSocket(home),
        identity: (v.identity as string | undefined) ?? join(home, "admin.identity"),
      });
      const callOpts: { deadlineMs?: number; workspace?: string } = {};
      if (deadlineMs !== undefined) callOpts.deadlineMs = deadlineMs;
      if (v.workspace !== undefined) callOpts.workspace = v.workspace as string;
      const r = await client.call(op, target, args, callOpts);
      if (json) process.stdout.write(`${JSON.stringify({ status: r.status, payload: toJson(r.payload) })}\n`);
      else process.stdout.write(`${r.status}${r.payload === undefined ? "" : render(r.payload, "  ")}\n`);
      return EXIT.OK;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT" && !client) {
        return reportError(new UsageError(`cannot read the identity file: ${(e as Error).message}`), json);
      }
      return reportError(e, json);
    } finally {
      await client?.close().catch(() => {});
    }
  },
};
