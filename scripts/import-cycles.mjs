#!/usr/bin/env node
// Fails if a package has an import cycle among its TypeScript modules (type-only imports count:
// a cycle of types still ties the two files' meanings together). Run by `npm run lint`.
// Usage: node scripts/import-cycles.mjs [--list]   (--list prints allow-listed cycles too)
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");

/**
 * Cycles known when the check was introduced (issue #18), left to the branches that restructure
 * those packages: reported, not failed on. Each entry is a cycle's sorted file list (paths from
 * the repository root, joined by " "). Remove an entry once its cycle is gone; a listed cycle
 * that no longer exists is reported, so the list cannot go stale.
 */
/** Cycles tolerated for now (none: issue #18 removed the last). A new one fails the lint step. */
const KNOWN = new Set([]);

/** The relative module specifiers a file imports or re-exports (static and dynamic). */
export function specifiers(source) {
  const out = [];
  // Comments could mention `from "./x.js"`: drop them first (strings are left as they are).
  const code = source.replace(/\/\*[\s\S]*?\*\//g, "").replace(/(^|[^:"'`])\/\/.*$/gm, "$1");
  const patterns = [
    /\b(?:import|export)\s+(?:type\s+)?[^'"`;]*?\bfrom\s*["']([^"']+)["']/g,
    /\bimport\s*["']([^"']+)["']/g,
    /\bimport\s*\(\s*["']([^"']+)["']\s*\)/g,
  ];
  for (const re of patterns) for (const m of code.matchAll(re)) out.push(m[1]);
  return out.filter((s) => s.startsWith("./") || s.startsWith("../"));
}

function walk(dir, files) {
  for (const e of readdirSync(dir)) {
    if (e === "node_modules" || e === "dist" || e.startsWith(".")) continue;
    const p = join(dir, e);
    if (statSync(p).isDirectory()) walk(p, files);
    else if (e.endsWith(".ts") && !e.endsWith(".d.ts")) files.push(p);
  }
  return files;
}

/** The file a relative specifier names: "./x.js" is the source "./x.ts" (or "./x/index.ts"). */
function target(from, spec) {
  const base = resolve(dirname(from), spec);
  const candidates = [base.replace(/\.js$/, ".ts"), base, `${base}.ts`, join(base, "index.ts")];
  return candidates.find((c) => c.endsWith(".ts") && existsSync(c));
}

/** Strongly connected components with more than one module, or a module importing itself (Tarjan). */
export function cycles(graph) {
  let index = 0;
  const idx = new Map();
  const low = new Map();
  const stack = [];
  const on = new Set();
  const found = [];
  const visit = (v) => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    on.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!idx.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v), low.get(w)));
      } else if (on.has(w)) low.set(v, Math.min(low.get(v), idx.get(w)));
    }
    if (low.get(v) === idx.get(v)) {
      const scc = [];
      let w;
      do {
        w = stack.pop();
        on.delete(w);
        scc.push(w);
      } while (w !== v);
      if (scc.length > 1 || graph.get(v)?.has(v)) found.push(scc.sort());
    }
  };
  for (const v of graph.keys()) if (!idx.has(v)) visit(v);
  return found;
}

/** Every package's cycles, as sorted lists of repository-relative paths. */
export function packageCycles() {
  const all = [];
  const dirs = [...readdirSync(join(root, "packages")).map((p) => join(root, "packages", p)), join(root, "examples")];
  for (const pkg of dirs) {
    if (!existsSync(pkg) || !statSync(pkg).isDirectory()) continue;
    const graph = new Map();
    for (const f of walk(pkg, [])) {
      const deps = new Set();
      for (const s of specifiers(readFileSync(f, "utf8"))) {
        const t = target(f, s);
        // Only edges inside the package: a relative path out of it is another package's business.
        if (t?.startsWith(pkg + "/")) deps.add(t);
      }
      graph.set(f, deps);
    }
    for (const c of cycles(graph)) all.push(c.map((f) => relative(root, f)));
  }
  return all;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const found = packageCycles();
  const keys = new Set(found.map((c) => c.join(" ")));
  const fresh = found.filter((c) => !KNOWN.has(c.join(" ")));
  const known = found.filter((c) => KNOWN.has(c.join(" ")));
  const stale = [...KNOWN].filter((k) => !keys.has(k));
  for (const c of known) console.log(`import cycle (known, issue #18): ${c.join(" ↔ ")}`);
  for (const k of stale) console.log(`import cycle gone, remove it from KNOWN in scripts/import-cycles.mjs: ${k}`);
  for (const c of fresh) console.error(`import cycle: ${c.join(" ↔ ")}`);
  if (fresh.length > 0) {
    console.error(`${fresh.length} import cycle(s): a module must not import, even for types, one that imports it back`);
    process.exit(1);
  }
  console.log(`import cycles: none new (${known.length} known)`);
}
