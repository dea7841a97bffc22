import { readFileSync } from "node:fs";
import type { KernelClient } from "@kpip/client";
import type { CborMap } from "@kpip/protocol";
import type { Command } from "../command.js";
import { CONNECT_OPTIONS, connectFromFlags } from "../connect.js";
import { EXIT, fromJson, render, reportError, toJson, UsageError } from "../util.js";

export const callCommand: Command = {
  name: "call",
  summary: "send one intent to the kernel and print the answer",
  usage: "kpip call <op> [target] [--args JSON | --data TEXT | --data-file F] [--identity F] [--json]",
  example: "kpip call storage.write obj://ws1/notes/today --data 'hello'",
  options: {
    args: { type: "string", description: 'arguments as JSON ({"$bytes": base64} for bytes)' },
    data: { type: "string", description: "shorthand for args.data as UTF-8 text" },
    "data-file": { type: "string", description: "shorthand for args.data read from a file (bytes)" },
    workspace: { type: "string", description: "workspace for the request context" },
    ...CONNECT_OPTIONS,
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
    const json = v.json === true;
    let client: KernelClient | undefined;
    try {
      client = await connectFromFlags(v);
      const callOpts: { deadlineMs?: number; workspace?: string } = {};
      if (deadlineMs !== undefined) callOpts.deadlineMs = deadlineMs;
      if (v.workspace !== undefined) callOpts.workspace = v.workspace as string;
      const r = await client.call(op, target, args, callOpts);
      if (json) process.stdout.write(`${JSON.stringify({ status: r.status, payload: toJson(r.payload) })}\n`);
      else process.stdout.write(`${r.status}${r.payload === undefined ? "" : render(r.payload, "  ")}\n`);
      return EXIT.OK;
    } catch (e) {
      return reportError(e, json);
    } finally {
      await client?.close().catch(() => {});
    }
  },
};
