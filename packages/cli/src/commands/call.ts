import { closeSync, constants, existsSync, fstatSync, openSync, writeFileSync } from "node:fs";
import { type KernelClient, RequestTooLargeError } from "@kpip/client";
import { type CborMap, isOp, isTarget, KpipError, systemDescribe } from "@kpip/protocol";
import { readAtMost, UnreadableFileError } from "@kpip/protocol/regular-file";
import { printable } from "../audit/printable.js";
import type { Command } from "../command.js";
import { CONNECT_OPTIONS, connectFromFlags } from "../connect.js";
import { didYouMean } from "../suggest.js";
import { EXIT, fromJson, render, reportError, toJson, UsageError } from "../util.js";

export const callCommand: Command = {
  name: "call",
  summary: "send one intent to the kernel and print the answer",
  usage:
    "kpip call <op> [target] [--args JSON | --data TEXT | --data-file F] [--wait] [-o FILE] [--identity F] [--json]  (ops: kpip call system.describe)",
  example: "kpip call storage.write obj://ws1/notes/today --data 'hello'",
  options: {
    args: { type: "string", description: 'arguments as JSON ({"$bytes": base64} for bytes)' },
    data: { type: "string", description: "shorthand for args.data as UTF-8 text" },
    "data-file": { type: "string", description: "shorthand for args.data read from a file (bytes)" },
    workspace: { type: "string", description: "workspace for the request context" },
    ...CONNECT_OPTIONS,
    "deadline-ms": { type: "string", description: "deadline for the call in milliseconds" },
    wait: {
      type: "boolean",
      description: "follow a DEFERRED answer (compute.submit) to the op's result, with progress on stderr",
    },
    out: {
      type: "string",
      short: "o",
      description: "write the payload's data bytes (storage.read) to FILE, a new file (0600), or - for stdout",
    },
    json: { type: "boolean", description: "print the response as JSON" },
  },
  async run(v, pos) {
    const [op, target = "kernel://", ...extra] = pos;
    if (!op) throw new UsageError("missing <op>, e.g. system.health (the kernel's ops: kpip call system.describe)");
    if (!isOp(op)) throw new UsageError(`${JSON.stringify(op)} is not an op name (family.name, e.g. storage.read)`);
    if (!isTarget(target))
      throw new UsageError(`${JSON.stringify(target)} is not a target URI (e.g. obj://ws1/path, topic://name, kernel://)`);
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
    // Refused before the call: an answer with nowhere to go would be read for nothing.
    if (typeof v.out === "string" && v.out !== "-" && existsSync(v.out))
      throw new UsageError(`--out: ${v.out} exists; --out writes a new file`);
    let deadlineMs: number | undefined;
    if (v["deadline-ms"] !== undefined) {
      deadlineMs = Number(v["deadline-ms"]);
      if (!Number.isSafeInteger(deadlineMs) || deadlineMs <= 0) throw new UsageError("--deadline-ms must be a positive integer");
    }
    const json = v.json === true;
    const dataFile = v["data-file"] === undefined ? undefined : openDataFile(v["data-file"] as string);
    let client: KernelClient | undefined;
    try {
      // Bodies from a file and raw bytes out are where shared memory pays for itself.
      client = await connectFromFlags(v, { shm: dataFile !== undefined || v.out !== undefined });
      if (dataFile) args.data = readDataFile(dataFile, client.maxBody);
      const callOpts: { deadlineMs?: number; workspace?: string } = {};
      if (deadlineMs !== undefined) callOpts.deadlineMs = deadlineMs;
      if (v.workspace !== undefined) callOpts.workspace = v.workspace as string;
      let r = await client.call(op, target, args, callOpts);
      if (v.wait === true && r.status === "DEFERRED")
        r = { ...r, status: "SUCCESS", payload: await followOp(client, r.payload as CborMap, json) };
      if (v.out !== undefined) writeData(v.out as string, r.payload);
      else if (json) process.stdout.write(`${JSON.stringify({ status: r.status, payload: toJson(r.payload) })}\n`);
      else process.stdout.write(`${r.status}${r.payload === undefined ? "" : render(r.payload, "  ")}\n`);
      return EXIT.OK;
    } catch (e) {
      if (client && e instanceof KpipError && e.errorClass === "SEMANTIC" && e.message.startsWith("unknown op"))
        return reportError(
          new KpipError(e.errorClass, `${e.message}${await suggestOp(client, op)}`, { code: e.code, requestId: e.requestId }),
          json,
        );
      return reportError(e, json);
    } finally {
      if (dataFile) closeSync(dataFile.fd);
      await client?.close().catch(() => {});
    }
  },
};

/**
 * `--data-file`: opened before connecting, and only a regular file (a FIFO would block the command
 * for ever, /dev/zero would fill its memory); a missing one is the command line's mistake.
 */
function openDataFile(path: string): { path: string; fd: number; size: number } {
  let fd: number;
  try {
    // O_NONBLOCK: opening a FIFO must not wait for a writer.
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (e) {
    throw new UsageError(`cannot read --data-file: ${(e as Error).message}`);
  }
  const st = fstatSync(fd);
  if (!st.isFile()) {
    closeSync(fd);
    throw new UsageError(`cannot read --data-file: ${path} is not a regular file`);
  }
  return { path, fd, size: st.size };
}

/**
 * The bytes of `--data-file`, read once connected: they travel in one REQUEST, so a file larger
 * than the session's maxBody is refused unread (a larger object goes through the chunked upload,
 * client.storage.putLarge), and one that grows past it while read is refused, never cut.
 */
function readDataFile(f: { path: string; fd: number; size: number }, maxBody: number): Buffer {
  if (f.size > maxBody) throw new RequestTooLargeError(f.size, maxBody);
  try {
    return readAtMost(f.fd, maxBody, `--data-file ${f.path}`, f.size + 1);
  } catch (e) {
    if (e instanceof UnreadableFileError)
      throw new RequestTooLargeError(f.size, maxBody, `${e.message} (the kernel's limit per message, maxBody)`);
    throw e;
  }
}

/** " — did you mean …" from the kernel's own op table (the command groups are plural, the ops singular). */
async function suggestOp(client: KernelClient, op: string): Promise<string> {
  try {
    const d = (await client.op(systemDescribe, "kernel://", {})).payload;
    return didYouMean(
      op,
      d.ops.map((o) => o.op),
    );
  } catch {
    return "";
  }
}

/** Follows an op to its end, printing its state changes on stderr; the answer becomes the op's result. */
async function followOp(client: KernelClient, deferred: CborMap, json: boolean): Promise<CborMap> {
  const uri = String(deferred.op);
  if (!json) process.stderr.write(`kpip: ${printable(uri)} is running; waiting for its result (Ctrl-C cancels it)\n`);
  const abort = new AbortController();
  const cancel = () => abort.abort(new Error(`cancelled ${uri}`));
  process.once("SIGINT", cancel);
  try {
    const result = await client.ops.wait(uri, { signal: abort.signal });
    return { op: uri, result: result ?? null };
  } finally {
    process.off("SIGINT", cancel);
  }
}

/**
 * `--out FILE`: the raw bytes of the payload's `data` (storage.read), not a rendering of them.
 * The bytes are a persona's and may be secret: a new file, 0600, never over an existing file nor
 * through a link (a root-run `kpip` writing to a path in /tmp a local user pointed elsewhere).
 */
function writeData(out: string, payload: unknown): void {
  const data = (payload as { data?: unknown } | undefined)?.data;
  if (!(data instanceof Uint8Array)) throw new UsageError("--out needs an answer with data bytes (e.g. storage.read)");
  if (out === "-") {
    process.stdout.write(data);
    return;
  }
  try {
    writeFileSync(out, data, { flag: "wx", mode: 0o600 });
  } catch (e) {
    throw new UsageError(`--out: cannot write ${out}: ${(e as Error).message} (--out writes a new file)`);
  }
}
