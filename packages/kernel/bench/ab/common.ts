/** What the audit A/B benches share: their arguments, and a record shaped like a `bench.noop` request's. */
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { encodeIntent, intentHash } from "@kpip/protocol";
import type { AuditEntry } from "../../src/audit/log.js";

/** `<other checkout> [--records N] [--rounds N]`; exits with the usage line when no checkout is named. */
export function abArgs(
  script: string,
  dflt: { records: number; rounds: number },
): { other: string; here: string; records: number; rounds: number } {
  const args = process.argv.slice(2);
  const other = args.find((a, i) => !a.startsWith("--") && !args[i - 1]?.startsWith("--"));
  const opt = (name: string, d: number) => {
    const at = args.indexOf(name);
    return at >= 0 ? Number(args[at + 1]) : d;
  };
  if (!other) {
    process.stderr.write(`usage: ${script} <other kpip checkout, built> [--records N] [--rounds N]\n`);
    process.exit(2);
  }
  return {
    other,
    here: resolve(fileURLToPath(new URL("../../../../../", import.meta.url))),
    records: opt("--records", dflt.records),
    rounds: opt("--rounds", dflt.rounds),
  };
}

const intent = encodeIntent({ op: "bench.noop", target: "kernel://", args: {} });
const hash = intentHash(intent);

/** The audit entry of the i-th `bench.noop` request. */
export const noopEntry = (i: number): AuditEntry => ({
  session: "sess-0123456789abcdef",
  persona: "admin",
  phase: "complete",
  requestId: i,
  op: "bench.noop",
  target: "kernel://",
  intentHash: hash,
  intent,
  caps: "bench.noop@kernel://",
  status: "SUCCESS",
  durationUs: 40 + (i % 50),
  traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
  detail: '{"status":"SUCCESS"}',
});
