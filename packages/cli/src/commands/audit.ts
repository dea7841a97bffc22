import { createPrivateKey, createPublicKey } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import {
  AnchorFileError,
  type AuditAnchor,
  type AuditRow,
  HOME_FILES,
  parseAnchors,
  resolveConfig,
  SqliteStore,
  verifyAnchors,
  verifyAuditFile,
} from "@kpip/kernel";
import { decodeCanonical, rawPublicKey } from "@kpip/protocol";
import type { Command } from "../command.js";
import { subcommandError } from "../suggest.js";
import { EXIT, resolveHome, toJson, UsageError } from "../util.js";

function openStore(home: string): SqliteStore {
  const path = join(home, HOME_FILES.database);
  if (!existsSync(path)) throw new UsageError(`no kernel home at ${home} (no ${HOME_FILES.database}) — pass --home`);
  return new SqliteStore(path);
}

/** Parses --since: an ISO time, or a relative age like 30s, 10m, 2h, 1d. */
export function parseSince(s: string, now = Date.now()): number {
  const m = /^(\d+)([smhd])$/.exec(s);
  if (m) return now - Number(m[1]) * { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3 }[m[2] as "s" | "m" | "h" | "d"];
  const t = Date.parse(s);
  if (Number.isNaN(t)) throw new UsageError(`--since must be an ISO time or an age like 10m (got ${JSON.stringify(s)})`);
  return t;
}

function rowJson(r: AuditRow): Record<string, unknown> {
  return {
    seq: r.seq,
    time: new Date(r.time).toISOString(),
    session: r.session,
    persona: r.persona,
    phase: r.phase,
    requestId: r.requestId,
    op: r.op,
    target: r.target,
    intentHash: r.intentHash ? Buffer.from(r.intentHash).toString("hex") : null,
    caps: r.caps,
    status: r.status,
    errorClass: r.errorClass,
    message: r.message,
    durationUs: r.durationUs,
    traceparent: r.traceparent,
    execution: r.execution,
    domain: r.domain,
    measurements: measurementsJson(r.measurements),
    hash: Buffer.from(r.hash).toString("hex"),
  };
}

/** ATTEST measurements as JSON (bytes as {"$bytes": base64}); the raw hex if they do not decode. */
function measurementsJson(m: Uint8Array | null): unknown {
  if (m === null) return null;
  try {
    return toJson(decodeCanonical(m));
  } catch {
    return { $hex: Buffer.from(m).toString("hex") };
  }
}

function rowLine(r: AuditRow): string {
  const t = new Date(r.time).toISOString().replace("T", " ").replace("Z", "");
  const outcome = r.status ? `${r.status}${r.errorClass ? `/${r.errorClass}` : ""}` : "";
  return `${String(r.seq).padStart(7)} ${t} ${r.persona.padEnd(14)} ${r.phase.padEnd(8)} ${(r.op ?? "").padEnd(16)} ${(r.target ?? "").padEnd(28)} ${outcome.padEnd(18)} ${r.message ?? ""}`;
}

const HEADER = `${"seq".padStart(7)} ${"time".padEnd(23)} ${"persona".padEnd(14)} ${"phase".padEnd(8)} ${"op".padEnd(16)} ${"target".padEnd(28)} ${"outcome".padEnd(18)} message`;

export const auditCommand: Command = {
  name: "audit",
  summary: "verify, tail and query the audit log",
  usage:
    "kpip audit verify [--anchors F] [--max-unsigned N] | tail [-n N] [-f] | query [--persona P] [--op O] [--status S] [--since T]  [--home DIR] [--json]",
  example: "kpip audit query --persona alice --status FAILURE --since 1h",
  options: {
    home: { type: "string", description: "kernel home (default $KPIP_HOME or the XDG state dir)" },
    json: { type: "boolean", description: "print JSON (verify: one object; tail/query: one object per line)" },
    anchors: {
      type: "string",
      description:
        "verify: also check the log against an audit anchor file (the kernel's auditAnchorFile): catches a cut-off tail",
    },
    "max-unsigned": {
      type: "string",
      description:
        "verify: most records in a row without a signed checkpoint (default: the home's auditCheckpointEvery; give the old value after lowering it)",
    },
    n: { type: "string", short: "n", description: "tail: how many records (default 20)" },
    follow: { type: "boolean", short: "f", description: "tail: keep printing new records" },
    persona: { type: "string", description: "query: only this persona" },
    op: { type: "string", description: "query: only this op" },
    status: { type: "string", description: "query: only this status (SUCCESS, FAILURE, PARTIAL, DEFERRED)" },
    since: { type: "string", description: "query: only records since an ISO time or an age (10m, 2h)" },
    limit: { type: "string", description: "query: most records (default 100)" },
  },
  async run(v, pos) {
    const [sub, ...extra] = pos;
    if (extra.length) throw new UsageError(`unexpected arguments: ${extra.join(" ")}`);
    const home = resolveHome(v.home as string | undefined);
    const json = v.json === true;
    switch (sub) {
      case "verify": {
        openStore(home).close(); // a clear usage error when there is no kernel home here
        let anchors: AuditAnchor[] | undefined;
        if (v.anchors !== undefined) {
          let text: string;
          try {
            text = readFileSync(v.anchors as string, "utf8");
          } catch (e) {
            throw new UsageError(`cannot read --anchors file: ${(e as Error).message}`);
          }
          try {
            const parsed = parseAnchors(text);
            anchors = parsed.anchors;
            if (parsed.tornTail) {
              process.stderr.write(
                "kpip audit: the anchor file's last line is incomplete (a crash mid-append); it was left out\n",
              );
            }
          } catch (e) {
            if (e instanceof AnchorFileError) throw new UsageError(`--anchors: ${e.message}`);
            throw e;
          }
        }
        let trustedKey: Uint8Array | undefined;
        const keyPath = join(home, HOME_FILES.kernelKey);
        if (existsSync(keyPath)) trustedKey = rawPublicKey(createPublicKey(createPrivateKey(readFileSync(keyPath))));
        const tty = process.stderr.isTTY && !json;
        const started = Date.now();
        // The kernel signs at least every auditCheckpointEvery records: a longer unsigned run means checkpoints were removed.
        let maxUnsigned: number;
        try {
          maxUnsigned =
            v["max-unsigned"] === undefined ? resolveConfig({ flags: { home } }).auditCheckpointEvery : Number(v["max-unsigned"]);
        } catch (e) {
          throw new UsageError(`${(e as Error).message} (or pass --max-unsigned)`);
        }
        if (!Number.isSafeInteger(maxUnsigned) || maxUnsigned <= 0)
          throw new UsageError("--max-unsigned must be a positive integer");
        // Ranges on worker threads for large logs; the same answer as the single pass.
        const r = await verifyAuditFile(join(home, HOME_FILES.database), {
          ...(trustedKey ? { trustedKey } : {}),
          maxUnsigned,
          onProgress: (done, total) => {
            if (!tty) return;
            const w = 30;
            const f = total ? Math.min(w, Math.round((done / total) * w)) : w;
            process.stderr.write(`\r[${"#".repeat(f)}${" ".repeat(w - f)}] ${done}/${total} records`);
          },
        });
        if (tty) process.stderr.write("\n");
        let result: typeof r & { anchors?: number } = r;
        if (r.ok && anchors) {
          // Only once the chain holds: then the hashes the anchors are compared with are the chain's.
          const store = openStore(home);
          try {
            const a = verifyAnchors(store, anchors, trustedKey);
            result = a.ok ? { ...r, anchors: a.anchors } : { ...r, ok: false, anchors: a.anchors, firstBad: a.firstBad };
          } finally {
            store.close();
          }
        }
        const secs = (Date.now() - started) / 1000;
        if (json) process.stdout.write(`${JSON.stringify({ ...result, seconds: secs })}\n`);
        else if (result.ok) {
          const a = result.anchors !== undefined ? `, ${result.anchors} anchors matched` : "";
          const p =
            result.prunedThrough !== undefined
              ? ` (records 1..${result.prunedThrough} pruned by retention; the log starts from the signed checkpoint at ${result.prunedThrough})`
              : "";
          process.stdout.write(
            `audit log OK: ${result.records} records${p}, ${result.checkpoints} signed checkpoints verified${a}\n`,
          );
        } else process.stdout.write(`audit log BROKEN at record ${result.firstBad?.seq}: ${result.firstBad?.reason}\n`);
        return result.ok ? EXIT.OK : EXIT.FAILED;
      }
      case "tail": {
        const n = v.n === undefined ? 20 : Number(v.n);
        if (!Number.isSafeInteger(n) || n <= 0) throw new UsageError("-n must be a positive integer");
        const store = openStore(home);
        const print = (rows: AuditRow[]) => {
          for (const r of rows) process.stdout.write(`${json ? JSON.stringify(rowJson(r)) : rowLine(r)}\n`);
        };
        if (!json) process.stdout.write(`${HEADER}\n`);
        let rows = store.queryAudit({ limit: n });
        print(rows);
        if (!v.follow) {
          store.close();
          return EXIT.OK;
        }
        let last = rows[rows.length - 1]?.seq ?? 0;
        await new Promise<void>((resolve) => {
          const t = setInterval(() => {
            rows = store.queryAudit({ afterSeq: last, limit: 1000 });
            print(rows);
            last = rows[rows.length - 1]?.seq ?? last;
          }, 250);
          const stop = () => {
            clearInterval(t);
            resolve();
          };
          process.once("SIGINT", stop);
          process.once("SIGTERM", stop);
        });
        store.close();
        return EXIT.OK;
      }
      case "query": {
        const q: Parameters<SqliteStore["queryAudit"]>[0] = {};
        if (v.persona !== undefined) q.persona = v.persona as string;
        if (v.op !== undefined) q.op = v.op as string;
        if (v.status !== undefined) {
          const s = (v.status as string).toUpperCase();
          if (!["SUCCESS", "FAILURE", "PARTIAL", "DEFERRED"].includes(s))
            throw new UsageError("--status must be SUCCESS, FAILURE, PARTIAL or DEFERRED");
          q.status = s;
        }
        if (v.since !== undefined) q.since = parseSince(v.since as string);
        if (v.limit !== undefined) {
          const l = Number(v.limit);
          if (!Number.isSafeInteger(l) || l <= 0) throw new UsageError("--limit must be a positive integer");
          q.limit = l;
        }
        const store = openStore(home);
        try {
          const rows = store.queryAudit(q);
          if (json) for (const r of rows) process.stdout.write(`${JSON.stringify(rowJson(r))}\n`);
          else {
            process.stdout.write(`${HEADER}\n`);
            for (const r of rows) process.stdout.write(`${rowLine(r)}\n`);
          }
          return EXIT.OK;
        } finally {
          store.close();
        }
      }
      default:
        throw subcommandError("audit", sub, ["verify", "tail", "query"]);
    }
  },
};
