import { DEFAULT_LIMITS } from "../constants.js";

/**
 * Identifier grammars shared by intents, contexts and capabilities.
 *
 * op         = segment 1*("." segment)            e.g. "storage.write", "llm.generate"
 * segment    = lower *(lower / digit / "_")       at most 128 bytes in all
 *
 * persona-id = name *("/" name)                   e.g. "alice", "alice/worker-1"; at most 8 levels, 255 bytes
 * workspace  = name                               e.g. "ws1"
 * name       = (lower / digit) *63(lower / digit / "_" / "-" / ".")
 *
 * target     = scheme "://" rest                  at most 2048 bytes
 * scheme     = "obj" / "agent" / "topic" / "op" / "token" / "persona" / "kernel"
 * rest       = "" (kernel only) / seg *("/" seg)
 * seg        = 1*pchar, not "." and not ".."; "*" and "**" are pattern segments
 * pchar      = ALPHA / DIGIT / "-" / "_" / "." / "~" / "!" / "$" / "&" / "'" / "(" / ")" / "+" / "," / ";" / "=" / ":" / "@" / "*"
 *
 * No percent-encoding, no empty segments, no "." or ".." segments, no query or fragment: a
 * target names a resource literally, so one resource has exactly one spelling and no
 * encoded trick can reach outside it.
 */
export const OP_RE = /^[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+$/;
export const NAME_RE = /^[a-z0-9][a-z0-9_.-]{0,63}$/;
export const SCHEMES = ["obj", "agent", "topic", "op", "token", "persona", "kernel"] as const;
export type TargetScheme = (typeof SCHEMES)[number];

const PCHAR_RE = /^[A-Za-z0-9\-_.~!$&'()+,;=:@*]+$/;
const MAX_PERSONA_DEPTH = 8;
const MAX_PERSONA_BYTES = 255;

export function isOp(op: string): boolean {
  return op.length <= DEFAULT_LIMITS.maxOpBytes && OP_RE.test(op);
}

export function isName(s: string): boolean {
  return isNameAt(s, 0, s.length);
}

/**
 * NAME_RE without "..", over s[start, end): a scanner, not a regex and a split, because every
 * frame's persona ids pass here (pinned to the regex by a property test).
 */
function isNameAt(s: string, start: number, end: number): boolean {
  const n = end - start;
  if (n === 0 || n > 64) return false;
  let c = s.charCodeAt(start);
  if (!((c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39))) return false;
  let dot = false;
  for (let i = start + 1; i < end; i++) {
    c = s.charCodeAt(i);
    if (c === 0x2e) {
      if (dot) return false; // ".."
      dot = true;
      continue;
    }
    dot = false;
    if (!((c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c === 0x5f || c === 0x2d)) return false;
  }
  return true;
}

export function isPersonaId(id: string): boolean {
  if (id.length === 0 || id.length > MAX_PERSONA_BYTES) return false;
  let start = 0;
  for (let parts = 1; parts <= MAX_PERSONA_DEPTH; parts++) {
    const slash = id.indexOf("/", start);
    const end = slash < 0 ? id.length : slash;
    if (!isNameAt(id, start, end)) return false;
    if (slash < 0) return true;
    start = slash + 1;
  }
  return false;
}

export function isWorkspaceId(id: string): boolean {
  return isName(id);
}

/** A target split into its scheme and its segments. */
export interface ParsedTarget {
  scheme: TargetScheme;
  segments: string[];
}

/**
 * Parses a target URI; returns a reason string instead when it breaks the grammar. With
 * `pattern`, the first segment may also be a wildcard (as in obj://** or agent://* /w1).
 */
export function parseTarget(target: string, pattern = false): ParsedTarget | string {
  if (target.length > DEFAULT_LIMITS.maxTargetBytes) return `target longer than ${DEFAULT_LIMITS.maxTargetBytes} bytes`;
  const sep = target.indexOf("://");
  if (sep < 0) return "target must look like scheme://rest";
  const scheme = target.slice(0, sep);
  if (!(SCHEMES as readonly string[]).includes(scheme)) return `unknown target scheme ${JSON.stringify(scheme)}`;
  const rest = target.slice(sep + 3);
  if (rest === "") {
    if (scheme === "kernel") return { scheme: "kernel", segments: [] };
    return `target ${scheme}:// needs a resource name`;
  }
  const segments = rest.split("/");
  for (const seg of segments) {
    if (seg === "") return "empty path segment (leading, trailing or doubled '/')";
    if (seg === "." || seg === "..") return `path segment ${JSON.stringify(seg)} is not allowed`;
    if (!PCHAR_RE.test(seg)) return `path segment ${JSON.stringify(seg)} has a character outside the target alphabet`;
    if (seg.includes("*") && seg !== "*" && seg !== "**") return "'*' may only form a whole segment ('*' or '**')";
  }
  const first = segments[0] as string;
  const wild = pattern && (first === "*" || first === "**");
  if ((scheme === "obj" || scheme === "agent" || scheme === "persona") && !wild && !isName(first)) {
    return `${scheme}:// must start with a lowercase name`;
  }
  return { scheme: scheme as TargetScheme, segments };
}

export function isTarget(target: string): boolean {
  return typeof parseTarget(target) !== "string";
}
