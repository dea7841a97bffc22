import { isOpPattern, isTargetPattern, type Limits, type Right } from "@kpip/protocol";
import { UsageError } from "../util.js";

// The arguments that describe a grant (`--allow`, `--ttl`, `--limit`), shared by token and
// agents: a module of their own, so the bundled `kpip agents` does not load the token command
// (which opens key files through the kernel package).

/** `OPS:TARGETS`, each a comma-separated list: `storage.read,storage.write:obj://ws1/**`. */
export function parseAllow(s: string): Right {
  const i = s.indexOf(":");
  if (i <= 0) throw new UsageError(`--allow ${JSON.stringify(s)} must look like OPS:TARGETS, e.g. storage.read:obj://ws1/**`);
  const ops = s
    .slice(0, i)
    .split(",")
    .map((x) => x.trim());
  const targets = s
    .slice(i + 1)
    .split(",")
    .map((x) => x.trim());
  for (const o of ops)
    if (!isOpPattern(o)) throw new UsageError(`${JSON.stringify(o)} is not an op pattern (e.g. storage.read, storage.*, **)`);
  for (const t of targets)
    if (!isTargetPattern(t)) throw new UsageError(`${JSON.stringify(t)} is not a target pattern (e.g. obj://ws1/**)`);
  return { ops, targets };
}

const DURATION: Record<string, number> = { ms: 1, s: 1e3, m: 60e3, h: 3600e3, d: 86400e3 };
/** 90s, 10m, 1h, 7d (or plain milliseconds). */
export function parseDuration(s: string, flag: string): number {
  const m = /^(\d+)(ms|s|m|h|d)?$/.exec(s.trim());
  if (!m) throw new UsageError(`${flag} must be a duration like 30s, 10m, 1h or 7d (got ${JSON.stringify(s)})`);
  const v = Number(m[1]) * (DURATION[m[2] ?? "ms"] as number);
  if (!Number.isSafeInteger(v) || v <= 0) throw new UsageError(`${flag} must be positive`);
  return v;
}

const UNITS: Record<string, number> = {
  "": 1,
  k: 1e3,
  kb: 1e3,
  m: 1e6,
  mb: 1e6,
  g: 1e9,
  gb: 1e9,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
};
/** name=value with an optional size unit: storage.bytes=10MB, agents=3. */
export function parseLimits(values: string[] | undefined): Limits | undefined {
  if (!values?.length) return undefined;
  const out: Limits = {};
  for (const s of values) {
    const m = /^([a-z][a-z0-9_.]*)=(\d+)([a-zA-Z]*)$/.exec(s.trim());
    const unit = UNITS[(m?.[3] ?? "").toLowerCase()];
    if (!m || unit === undefined)
      throw new UsageError(`--limit ${JSON.stringify(s)} must look like name=value, e.g. storage.bytes=10MB`);
    const v = Number(m[2]) * unit;
    if (!Number.isSafeInteger(v)) throw new UsageError(`--limit ${s} is too large`);
    out[m[1] as string] = v;
  }
  return out;
}
