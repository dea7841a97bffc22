import { createHash } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

/** Every file under `dir` with the SHA-256 of its bytes: the audit tools must leave evidence as it was. */
export function hashTree(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) out.set(p, createHash("sha256").update(readFileSync(p)).digest("hex"));
      else out.set(p, e.isSocket() ? "socket" : "other");
    }
  };
  walk(dir);
  return out;
}
