/**
 * Rights patterns.
 *
 * Op patterns are dotted names whose segments may be `*` (exactly one segment) or, as the
 * last segment only, `**` (zero or more segments): `storage.*` matches `storage.read`;
 * `storage.**` matches `storage` and everything below; `**` matches every op.
 *
 * Target patterns are `scheme://seg/…` with the same two wildcards over `/` segments:
 * `obj://ws1/*` matches `obj://ws1/a` but not `obj://ws1/a/b`; `obj://ws1/a/**` matches
 * `obj://ws1/a` and everything under it. Matching is by whole segments, never by string
 * prefix: `obj://ws1/a` matches only itself — never `obj://ws1/ab` nor `obj://ws1/a/b`.
 * A request target may itself be a pattern (an event subscription): then it is allowed only
 * if every target it can match is matched by the grant's pattern (a subset test), never by
 * matching its `*` or `**` as a literal segment. The scheme must match exactly; the target
 * `**` matches everything.
 */
export function matchOp(pattern: string, op: string): boolean {
  if (pattern === "**") return true;
  return matchSegments(pattern.split("."), op.split("."));
}

export function matchTarget(pattern: string, target: string): boolean {
  if (pattern === "**") return true;
  // '*' only ever forms a whole wildcard segment (grammar §7.3): a request pattern needs the subset test.
  if (target.includes("*")) return patternCovers(pattern, target, "/");
  const ps = pattern.indexOf("://");
  const ts = target.indexOf("://");
  if (ps < 0 || ts < 0 || pattern.slice(0, ps) !== target.slice(0, ts)) return false;
  const pr = pattern.slice(ps + 3);
  const tr = target.slice(ts + 3);
  return matchSegments(pr === "" ? [] : pr.split("/"), tr === "" ? [] : tr.split("/"));
}

function matchSegments(p: string[], t: string[]): boolean {
  for (let i = 0; i < p.length; i++) {
    const seg = p[i];
    if (seg === "**") return i === p.length - 1;
    if (i >= t.length) return false;
    if (seg !== "*" && seg !== t[i]) return false;
  }
  return p.length === t.length;
}

/** True if every op/target `inner` matches is also matched by `outer` (used to refuse widening). */
export function patternCovers(outer: string, inner: string, sep: "." | "/"): boolean {
  if (outer === "**") return true;
  if (inner === "**") return false;
  const split = (s: string) => {
    if (sep === ".") return { scheme: "", segs: s.split(".") };
    const i = s.indexOf("://");
    const rest = i < 0 ? s : s.slice(i + 3);
    return { scheme: i < 0 ? "" : s.slice(0, i), segs: rest === "" ? [] : rest.split("/") };
  };
  const o = split(outer);
  const n = split(inner);
  if (o.scheme !== n.scheme) return false;
  for (let i = 0; i < o.segs.length; i++) {
    const a = o.segs[i];
    if (a === "**") return true;
    const b = n.segs[i];
    if (b === undefined || b === "**") return false;
    if (a !== "*" && (b === "*" || a !== b)) return false;
  }
  return o.segs.length === n.segs.length;
}

/** A persona is within a subject when it is the subject or one of its sub-personas. */
export function personaWithin(persona: string, subject: string): boolean {
  return persona === subject || persona.startsWith(`${subject}/`);
}
