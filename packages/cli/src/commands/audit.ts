import { constants as bufferConstants } from "node:buffer";
import { createPrivateKey, createPublicKey } from "node:crypto";
import { existsSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  AnchorFileError,
  type AuditAnchor,
  type AuditReader,
  type AuditRecord,
  HOME_FILES,
  HomeReadError,
  openAuditReader,
  parseAnchors,
  readRegularFile,
  resolveConfig,
  unsafeDirectoryAboveFile,
  verifyAnchors,
  verifyAuditReader,
} from "@kpip/kernel";
import { decodeCanonical, rawPublicKey } from "@kpip/protocol";
import { globMatcher, parsePositive, parseSeqRange, parseTime, patternTest, traceId } from "../audit/filters.js";
import type { QueryFilter } from "../audit/index-query.js";
import { queryRecords } from "../audit/index-query.js";
import { IndexStaleError } from "../audit/index-read.js";
import { AuditIndex, indexDir, sweepIndexes } from "../audit/index-store.js";
import { indexedTimeline, TRACE_PREFIX } from "../audit/index-timeline.js";
import { journalNote } from "../audit/journal-note.js";
import { printable } from "../audit/printable.js";
import { prunedNote } from "../audit/pruned-note.js";
import { bodyAt, show, shownJson, shownText } from "../audit/show.js";
import { Summary } from "../audit/summary.js";
import { rowCells, rowJson, TIMELINE_HEADER, type TimelineFilter, type TimelineRow, timeline } from "../audit/timeline.js";
import { nodeJson, tokenTree, treeDot, treeText, walk } from "../audit/tokens.js";
import { report, reportText } from "../audit/verify.js";
import type { Command, Values } from "../command.js";
import { subcommandError } from "../suggest.js";
import { EXIT, isoTime, printTable, reportError, resolveHome, toJson, UsageError } from "../util.js";

/**
 * The home's database, for reading only: no file of the home is created or changed (see
 * openAuditReader), so these commands are safe on a copy of the evidence, even a read-only one.
 */
function openHome(home: string): AuditReader {
  if (!existsSync(home) || !statSync(home).isDirectory())
    throw new UsageError(`no kernel home at ${home} (no such directory) — pass --home`);
  const path = join(home, HOME_FILES.database);
  if (!existsSync(path)) throw new UsageError(`${home} is not a kernel home (no ${HOME_FILES.database}) — pass --home`);
  return openAuditReader(path, { intentMaxBytes: keptIntentBytes(home) });
}

/** The home's auditIntentMaxBytes (the scans' batches are sized for its records), or the default without a readable config. */
function keptIntentBytes(home: string): number | undefined {
  try {
    return resolveConfig({ flags: { home } }).auditIntentMaxBytes;
  } catch {
    return undefined;
  }
}

function recordJson(r: AuditRecord): Record<string, unknown> {
  return {
    seq: r.seq,
    time: isoTime(r.time),
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
    detail: r.detail ?? null,
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

function recordLine(r: AuditRecord): string {
  const t = isoTime(r.time);
  const outcome = r.status ? `${r.status}${r.errorClass ? `/${r.errorClass}` : ""}` : "";
  return printable(
    `${String(r.seq).padStart(7)} ${t} ${r.persona.padEnd(14)} ${r.phase.padEnd(8)} ${(r.op ?? "").padEnd(16)} ${(r.target ?? "").padEnd(28)} ${outcome.padEnd(18)} ${r.message ?? ""}`,
  );
}

const HEADER = `${"seq".padStart(7)} ${"time (UTC)".padEnd(24)} ${"persona".padEnd(14)} ${"phase".padEnd(8)} ${"op".padEnd(16)} ${"target".padEnd(28)} ${"outcome".padEnd(18)} message`;

/** The paging note: on stderr, so stdout stays the rows alone (one JSON object each under --json). */
function pageNote(json: boolean, shown: number, more: number, next: number | null, what: string, hint: string): void {
  if (json) process.stderr.write(`${JSON.stringify({ page: { shown, more, next } })}\n`);
  else if (more > 0) process.stderr.write(`${shown} ${what} shown; ${more} more match: ${hint}\n`);
  else process.stderr.write(`${shown} ${what}, all shown\n`);
}

/** Flags each subcommand takes (besides --home and --json): another one is a mistake, not ignored. */
const FLAGS: Record<string, string[]> = {
  verify: ["anchors", "max-unsigned"],
  tail: ["n", "follow"],
  query: ["persona", "op", "status", "since", "limit", "no-index", "index-dir"],
  timeline: [
    "trace",
    "session",
    "token",
    "derived",
    "target",
    "since",
    "until",
    "seq",
    "persona",
    "op",
    "limit",
    "after",
    "summary",
    "no-index",
    "index-dir",
  ],
  show: ["raw", "body"],
  tokens: ["format", "token"],
};

export const auditCommand: Command = {
  name: "audit",
  summary: "read the audit log without a kernel: timeline, show, tokens, verify, tail, query",
  usage:
    "kpip audit timeline [filters] [--limit N] [--after SEQ] [--summary] | show SEQ [--raw F [--body args.K]] | tokens [--token ID] [--format text|json|dot] | verify [--anchors F] [--max-unsigned N] | tail [-n N] [-f] | query [--persona P] [--op O] [--status S] [--since T] [--limit N]  [--home DIR] [--json]",
  example: "kpip audit timeline --persona 'alice/**' --op 'storage.*' --since 2h",
  options: {
    home: { type: "string", description: "kernel home (default $KPIP_HOME or the XDG state dir); only read, never changed" },
    json: { type: "boolean", description: "print JSON: one object per line (verify, show: one object)" },
    anchors: {
      type: "string",
      description:
        "verify: also check the log against an audit anchor file (the kernel's auditAnchorFile): catches a cut-off tail; refused in a directory another user could swap it in",
    },
    "max-unsigned": {
      type: "string",
      description:
        "verify: most records in a row without a signed checkpoint (default: the home's auditCheckpointEvery; give the old value after lowering it)",
    },
    n: { type: "string", short: "n", description: "tail: how many records (default 20)" },
    follow: { type: "boolean", short: "f", description: "tail: keep printing new records" },
    persona: {
      type: "string",
      description:
        "query, timeline: only this persona, or those a pattern matches (P/** : P and its sub-personas); timeline: a path glob as --target's; query: a SQLite GLOB (* any run, ? one character, […] a set)",
    },
    op: {
      type: "string",
      description:
        "query, timeline: only this op, or those a pattern matches (storage.* : a family); timeline: a path glob as --target's with '.' between segments; query: a SQLite GLOB",
    },
    status: { type: "string", description: "query: only this status (SUCCESS, FAILURE, PARTIAL, DEFERRED)" },
    since: {
      type: "string",
      description: "query, timeline: only since an ISO time (UTC unless it names a zone) or an age (10m, 2h)",
    },
    until: { type: "string", description: "timeline: only until an ISO time or an age" },
    limit: { type: "string", description: "query, timeline: most rows (default 100); the rest are counted on stderr" },
    trace: { type: "string", description: "timeline: only this W3C trace id (or a prefix, or a whole traceparent)" },
    session: { type: "string", description: "timeline: only this session id (or a prefix)" },
    token: {
      type: "string",
      description:
        "timeline: only requests authorized by (or about) this token; tokens: its chain and what came of it (an id or a prefix; a prefix naming several tokens is refused)",
    },
    derived: {
      type: "boolean",
      description:
        "timeline: with --token, also every token minted, narrowed, refreshed or spawned from it, as the record knows them (what a leaked token enabled); the token must be on the record",
    },
    target: {
      type: "string",
      description:
        "timeline: only targets with this prefix, or matching a path glob (obj://proj/**): * any run within one segment, ** any run across, ? one character, […] one of a set (only ** matches '/'); every other character is itself; at most 4096 characters",
    },
    seq: { type: "string", description: "timeline: only rows whose first record is in A..B (A.., ..B, N)" },
    after: { type: "string", description: "timeline: the next page: rows after this seq (stderr says which)" },
    summary: {
      type: "boolean",
      description:
        "timeline: instead of rows, the matching rows counted by persona, op, outcome and scope (a target's first segment, obj://ws/), rarest first: one act hidden in a flood stands out; --limit bounds the groups",
    },
    raw: { type: "string", description: "show: write the intent's bytes (or --body's) to this file (- for stdout)" },
    body: { type: "string", description: "show: with --raw, the byte value at this path of the intent (args.data)" },
    "no-index": {
      type: "boolean",
      description:
        "query, timeline: decode every record (the full scan) instead of answering from the side index; the same answer, slower on a long log",
    },
    "index-dir": {
      type: "string",
      description:
        "query, timeline: where the side index is kept (default $XDG_CACHE_HOME/kpip/audit-index, else ~/.cache/kpip/audit-index); never inside the home",
    },
    format: { type: "string", description: "tokens: text (a tree, the default), json (one token per line) or dot (Graphviz)" },
  },
  async run(v, pos) {
    const [sub, ...extra] = pos;
    const json = v.json === true;
    const flags = sub !== undefined ? FLAGS[sub] : undefined;
    if (!flags) throw subcommandError("audit", sub, Object.keys(FLAGS));
    for (const k of Object.keys(v)) {
      if (k !== "home" && k !== "json" && v[k] !== undefined && !flags.includes(k))
        throw new UsageError(`--${k} does not apply to audit ${sub}`);
    }
    if (sub === "show" ? extra.length !== 1 : extra.length) {
      throw new UsageError(
        sub === "show" ? "audit show takes one record sequence number" : `unexpected arguments: ${extra.join(" ")}`,
      );
    }
    const home = resolveHome(v.home as string | undefined);
    try {
      switch (sub) {
        case "verify":
          return await verify(home, v, json);
        case "tail":
          return await tail(home, v, json);
        case "query":
          return query(home, v, json);
        case "timeline":
          return timelineCmd(home, v, json);
        case "show":
          return showCmd(home, extra[0] as string, v, json);
        default:
          return tokensCmd(home, v, json);
      }
    } catch (e) {
      // A home that cannot be read (not a database, no audit table): a failed check, exit 1.
      if (e instanceof HomeReadError) return reportError(e, json);
      // Damage past the schema shows only when a page is read: the same failed check.
      if ((e as Error).name === "SqliteError")
        return reportError(new HomeReadError(`the home's database is damaged: ${(e as Error).message}`, "corrupt"), json);
      throw e;
    }
  },
};

/** The longest anchor file read: past it the text could not be one string anyway. */
const ANCHOR_FILE_MAX_BYTES = bufferConstants.MAX_STRING_LENGTH;

/** A PEM Ed25519 key is ~120 bytes. */
const KEY_FILE_MAX_BYTES = 64 * 1024;

/**
 * Why the anchor file's directories let another user swap it (as the kernel refuses to append
 * to such a file, case 541): anchors they wrote would vouch for a chain they rewrote. Through a
 * link too, the directories above the file it names. Undefined: none, or no such path (the read
 * says so).
 */
function anchorFileUnsafe(path: string): string | undefined {
  try {
    return unsafeDirectoryAboveFile(path, `the anchor file ${path}`);
  } catch {
    return undefined;
  }
}

async function verify(home: string, v: Values, json: boolean): Promise<number> {
  let anchors: AuditAnchor[] | undefined;
  if (v.anchors !== undefined) {
    const unsafe = anchorFileUnsafe(v.anchors as string);
    if (unsafe) throw new UsageError(`--anchors: ${unsafe}`);
    let text: string;
    try {
      // Regular and bounded: a FIFO would hang the check, /dev/zero fill memory. An anchor line is
      // ~330 bytes: the bound (the longest string V8 makes) holds well over a million checkpoints.
      text = readRegularFile(v.anchors as string, ANCHOR_FILE_MAX_BYTES).toString("utf8");
    } catch (e) {
      throw new UsageError(`cannot read --anchors file: ${(e as Error).message}`);
    }
    try {
      const parsed = parseAnchors(text);
      anchors = parsed.anchors;
      if (parsed.tornTail)
        process.stderr.write("kpip audit: the anchor file's last line is incomplete (a crash mid-append); it was left out\n");
    } catch (e) {
      if (e instanceof AnchorFileError) throw new UsageError(`--anchors: ${e.message}`);
      throw e;
    }
  }
  // The kernel signs at least every auditCheckpointEvery records: a longer unsigned run means checkpoints were removed.
  let maxUnsigned: number;
  // The home's retention setting, named in a warning about a pruned start (none without a readable config).
  let retain: number | undefined;
  try {
    retain = resolveConfig({ flags: { home } }).auditRetainRecords;
  } catch {
    retain = undefined;
  }
  try {
    maxUnsigned =
      v["max-unsigned"] === undefined
        ? resolveConfig({ flags: { home } }).auditCheckpointEvery
        : parsePositive(v["max-unsigned"] as string, "--max-unsigned");
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(`${(e as Error).message} (or pass --max-unsigned)`);
  }
  const reader = openHome(home);
  try {
    let trustedKey: Uint8Array | undefined;
    const keyPath = join(home, HOME_FILES.kernelKey);
    if (existsSync(keyPath)) {
      try {
        // Bounded and regular only: a tampered home's kernel.key may be a FIFO or /dev/zero.
        trustedKey = rawPublicKey(createPublicKey(createPrivateKey(readRegularFile(keyPath, KEY_FILE_MAX_BYTES))));
      } catch (e) {
        throw new HomeReadError(`the home's kernel.key cannot be used: ${(e as Error).message}`, "corrupt");
      }
    }
    const tty = process.stderr.isTTY && !json;
    const started = Date.now();
    // Ranges on worker threads for large logs; the same answer as the single pass.
    const r = await verifyAuditReader(reader, {
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
    let result: typeof r & { anchors?: number; anchorsPruned?: number } = r;
    if (r.ok && anchors) {
      // Only once the chain holds: then the hashes the anchors are compared with are the chain's.
      const a = verifyAnchors(reader, anchors, trustedKey);
      const pruned = a.pruned ? { anchorsPruned: a.pruned } : {};
      result = a.ok ? { ...r, anchors: a.anchors, ...pruned } : { ...r, ok: false, anchors: a.anchors, firstBad: a.firstBad };
    }
    const full = report(reader, result, trustedKey ? "kernel.key" : "checkpoints", anchors !== undefined, retain);
    const secs = (Date.now() - started) / 1000;
    if (json) process.stdout.write(`${JSON.stringify({ ...full, seconds: secs })}\n`);
    else process.stdout.write(reportText(full));
    return result.ok ? EXIT.OK : EXIT.FAILED;
  } finally {
    reader.close();
  }
}

async function tail(home: string, v: Values, json: boolean): Promise<number> {
  const n = v.n === undefined ? 20 : parsePositive(v.n as string, "-n");
  let reader = openHome(home);
  let last = 0;
  const print = (rows: AuditRecord[]) => {
    for (const r of rows) process.stdout.write(`${json ? JSON.stringify(recordJson(r)) : recordLine(r)}\n`);
    last = rows.at(-1)?.seq ?? last;
  };
  /**
   * Everything newer than the last printed up to the head seen now, a batch at a time (a busy
   * kernel adds thousands between two looks). Up to that head only: against a kernel appending
   * faster than this prints, one look must still end, or Ctrl-C would never be handled.
   */
  const printNewer = () => {
    const head = reader.headSeq() ?? last;
    while (last < head) {
      const rows = reader.scanAudit(last + 1, 1000);
      if (rows.length === 0) return;
      print(rows);
    }
  };
  try {
    if (!json) process.stdout.write(`${HEADER}\n`);
    const rows: AuditRecord[] = [];
    for (const r of reader.records({ newest: true })) {
      rows.push(r);
      if (rows.length === n) break;
    }
    print(rows.reverse());
    if (!v.follow) return EXIT.OK;
    // A private copy does not grow: read a new one when the home's database or its -wal changes.
    const db = join(home, HOME_FILES.database);
    const stamp = () => [db, `${db}-wal`].map((f) => (existsSync(f) ? `${statSync(f).mtimeMs}:${statSync(f).size}` : "-")).join();
    let seen = stamp();
    await new Promise<void>((resolve) => {
      const t = setInterval(() => {
        if (reader.snapshot) {
          const now = stamp();
          if (now === seen) return;
          seen = now;
          reader.close();
          reader = openHome(home);
        }
        printNewer();
      }, 250);
      const stop = () => {
        clearInterval(t);
        resolve();
      };
      process.once("SIGINT", stop);
      process.once("SIGTERM", stop);
    });
    return EXIT.OK;
  } finally {
    reader.close();
  }
}

function query(home: string, v: Values, json: boolean): number {
  const q: QueryFilter = {};
  if (v.persona !== undefined) q.persona = patternTest(v.persona as string, "--persona");
  if (v.op !== undefined) q.op = patternTest(v.op as string, "--op");
  if (v.status !== undefined) {
    const s = (v.status as string).toUpperCase();
    if (!["SUCCESS", "FAILURE", "PARTIAL", "DEFERRED"].includes(s))
      throw new UsageError("--status must be SUCCESS, FAILURE, PARTIAL or DEFERRED");
    q.status = s;
  }
  if (v.since !== undefined) q.since = parseTime(v.since as string, "--since");
  const limit = v.limit === undefined ? 100 : parsePositive(v.limit as string, "--limit");
  const reader = openHome(home);
  try {
    // The fields are in the records' bytes only: the full scan decodes every record; the side index only those it cannot rule out.
    const idx = sideIndex(reader, home, v);
    const { rows, total } = withIndex(idx, (i) => queryRecords(reader, i, q, limit));
    if (json) for (const r of rows) process.stdout.write(`${JSON.stringify(recordJson(r))}\n`);
    else {
      process.stdout.write(`${HEADER}\n`);
      for (const r of rows) process.stdout.write(`${recordLine(r)}\n`);
    }
    const left = total - rows.length;
    const first = rows[0]?.seq ?? null;
    if (json)
      process.stderr.write(
        `${JSON.stringify({ page: { shown: rows.length, more: left, newest: true, before: left > 0 ? first : null } })}\n`,
      );
    else if (left > 0)
      process.stderr.write(
        `the newest ${rows.length} of ${total} matching records shown; ${left} older left out (--limit ${total}, or kpip audit timeline --seq ..${(first ?? 1) - 1})\n`,
      );
    else process.stderr.write(`${rows.length} matching records, all shown\n`);
    prunedNote(reader, json);
    journalNote(reader, json);
    return EXIT.OK;
  } finally {
    reader.close();
  }
}

function timelineCmd(home: string, v: Values, json: boolean): number {
  const f: TimelineFilter = {};
  if (v.trace !== undefined) f.trace = (traceId(v.trace as string) as string).toLowerCase();
  if (v.session !== undefined) f.session = v.session as string;
  if (v.token !== undefined) f.token = v.token as string;
  if (v.target !== undefined) f.target = globMatcher(v.target as string, "/", true, "--target");
  if (v.persona !== undefined) f.persona = globMatcher(v.persona as string, "/", false, "--persona");
  if (v.op !== undefined) f.op = globMatcher(v.op as string, ".", false, "--op");
  if (v.since !== undefined) f.since = parseTime(v.since as string, "--since");
  if (v.until !== undefined) f.until = parseTime(v.until as string, "--until");
  if (f.since !== undefined && f.until !== undefined && f.until < f.since) throw new UsageError("--until is before --since");
  if (v.seq !== undefined) f.seq = parseSeqRange(v.seq as string);
  for (const k of ["trace", "session", "token", "target", "persona", "op"] as const) {
    if (v[k] === "") throw new UsageError(`--${k} must not be empty`);
  }
  if (v.derived === true && f.token === undefined) throw new UsageError("--derived goes with --token ID");
  const limit = v.limit === undefined ? 100 : parsePositive(v.limit as string, "--limit");
  const after = v.after === undefined ? 0 : parsePositive(v.after as string, "--after");
  const reader = openHome(home);
  try {
    if (v.derived === true) {
      f.tokenSet = derivedTokens(reader, f.token as string);
      delete f.token;
    }
    const idx =
      f.tokenSet === undefined && (f.trace === undefined || TRACE_PREFIX.test(f.trace)) ? sideIndex(reader, home, v) : undefined;
    const target = v.target as string | undefined;
    // `visitor` makes the summary's counter afresh for each try (a stale index's is answered again by the scan).
    const walk = (visitor?: () => (row: TimelineRow) => void, lim = limit) =>
      withIndex(idx, (i) => {
        const visit = visitor?.();
        return i ? indexedTimeline(reader, i, f, target, after, lim, visit) : timeline(reader, f, after, lim, visit);
      });
    if (v.summary === true) return summaryOut(reader, f, limit, json, walk);
    const page = walk();
    // As audit tokens: a prefix naming several tokens would show their requests as one token's.
    if (page.tokens.size > 1) {
      const ids = [...page.tokens];
      throw new UsageError(
        `--token ${f.token} names ${ids.length} tokens (${ids.slice(0, 5).join(", ")}${ids.length > 5 ? ", …" : ""}): give more of the id`,
      );
    }
    if (json) for (const r of page.rows) process.stdout.write(`${JSON.stringify(rowJson(r))}\n`);
    else
      printTable(
        TIMELINE_HEADER,
        page.rows.map((r) => rowCells(r).map((t) => printable(t))),
      );
    pageNote(json, page.rows.length, page.more, page.next, "rows", `the same command with --after ${page.next}`);
    prunedNote(reader, json);
    journalNote(reader, json);
    return EXIT.OK;
  } finally {
    reader.close();
  }
}

/** `timeline --summary`: the groups, rarest first, `limit` of them; how many more on stderr. */
function summaryOut(
  reader: AuditReader,
  f: TimelineFilter,
  limit: number,
  json: boolean,
  walk: (visitor: () => (row: TimelineRow) => void, limit: number) => { tokens: Set<string> },
): number {
  let sum = new Summary();
  const tokens = walk(() => {
    sum = new Summary();
    return (r) => sum.add(r);
  }, 0).tokens;
  if (tokens.size > 1) {
    const ids = [...tokens];
    throw new UsageError(
      `--token ${f.token} names ${ids.length} tokens (${ids.slice(0, 5).join(", ")}${ids.length > 5 ? ", …" : ""}): give more of the id`,
    );
  }
  const groups = sum.groups();
  const shown = groups.slice(0, limit);
  if (json)
    for (const g of shown) process.stdout.write(`${JSON.stringify({ ...g, first: isoTime(g.first), last: isoTime(g.last) })}\n`);
  else
    printTable(
      ["count", "persona", "op", "outcome", "scope", "first", "last", "first time", "last time"],
      shown.map((g) =>
        [
          String(g.count),
          g.persona,
          g.op,
          g.outcome,
          g.scope,
          String(g.firstSeq),
          String(g.lastSeq),
          isoTime(g.first),
          isoTime(g.last),
        ].map((t) => printable(t)),
      ),
    );
  const more = groups.length - shown.length;
  if (json) process.stderr.write(`${JSON.stringify({ groups: { shown: shown.length, more } })}\n`);
  else
    process.stderr.write(
      more > 0
        ? `${shown.length} groups shown (rarest first); ${more} more: --limit ${groups.length}\n`
        : `${shown.length} groups, all shown\n`,
    );
  prunedNote(reader, json);
  journalNote(reader, json);
  return EXIT.OK;
}

/**
 * The side index of the home (index-store.ts), brought up to the log's head; undefined with
 * --no-index, or where none can be kept (said on stderr): then the full scan answers.
 */
function sideIndex(reader: AuditReader, home: string, v: Values): AuditIndex | undefined {
  if (v["no-index"] === true) return undefined;
  const note = (s: string) => process.stderr.write(`kpip audit: ${s}\n`);
  const dir = indexDir(home, v["index-dir"] as string | undefined);
  if (dir === undefined) {
    note("the cache directory is inside the home: no side index (--index-dir elsewhere)");
    return undefined;
  }
  try {
    sweepIndexes(dir);
    return AuditIndex.open(reader, home, dir, note);
  } catch (e) {
    note(`the side index at ${dir} cannot be used (${(e as Error).message}): every record is decoded`);
    return undefined;
  }
}

/** `fn` with the index, or again by the full scan when the index turned out not to be the log's. */
function withIndex<T>(idx: AuditIndex | undefined, fn: (idx: AuditIndex | undefined) => T): T {
  if (!idx) return fn(undefined);
  try {
    return fn(idx);
  } catch (e) {
    if (!(e instanceof IndexStaleError)) throw e;
    idx.discard();
    process.stderr.write(`kpip audit: ${e.message}: every record is decoded (the index is built anew next time)\n`);
    return fn(undefined);
  }
}

/**
 * `--token T --derived`: T (one token on the record, by id or prefix) and every token the record
 * says came from it (minted, narrowed offline, refreshed, an agent's at its spawn), to any depth.
 */
function derivedTokens(reader: AuditReader, t: string): Set<string> {
  const nodes = tokenTree(reader);
  const ids = [...nodes.keys()].filter((id) => id.startsWith(t));
  if (ids.length === 0) throw new UsageError(`--token ${t}: no such token on the record (kpip audit tokens lists them)`);
  if (ids.length > 1)
    throw new UsageError(
      `--token ${t} names ${ids.length} tokens (${ids.slice(0, 5).join(", ")}${ids.length > 5 ? ", …" : ""}): give more of the id`,
    );
  const set = new Set<string>();
  const todo = [ids[0] as string];
  while (todo.length) {
    const id = todo.pop() as string;
    if (set.has(id)) continue;
    set.add(id);
    // One by one: a spread of a token's children (a persona may mint very many) is bounded by the stack.
    for (const c of nodes.get(id)?.children ?? []) todo.push(c);
  }
  process.stderr.write(`--derived: ${ids[0]} and ${set.size - 1} token${set.size === 2 ? "" : "s"} derived from it\n`);
  return set;
}

function showCmd(home: string, arg: string, v: Values, json: boolean): number {
  const seq = parsePositive(arg, "the record sequence number");
  if (v.body !== undefined && v.raw === undefined) throw new UsageError("--body goes with --raw FILE");
  const reader = openHome(home);
  try {
    const s = show(reader, seq);
    if (!s) {
      const first = reader.firstAuditSeq();
      const head = reader.headSeq();
      throw new UsageError(`no record ${seq} in this log (it holds ${first === undefined ? "none" : `${first}..${head}`})`);
    }
    if (v.raw !== undefined) {
      if (!s.intent || !s.intentBytes) throw new UsageError(`--raw: record ${seq} has no intent bytes to write: ${s.intentNote}`);
      const bytes = v.body !== undefined ? bodyAt(s.intent, v.body as string) : s.intentBytes;
      if (v.raw === "-") process.stdout.write(bytes);
      else {
        try {
          writeFileSync(v.raw as string, bytes, { flag: "wx", mode: 0o600 });
        } catch (e) {
          throw new UsageError(`--raw: cannot write ${v.raw}: ${(e as Error).message}`);
        }
        process.stderr.write(`${bytes.length} bytes written to ${v.raw}\n`);
      }
      if (v.raw === "-") return EXIT.OK;
    }
    process.stdout.write(json ? `${JSON.stringify(shownJson(s))}\n` : shownText(s));
    return EXIT.OK;
  } finally {
    reader.close();
  }
}

function tokensCmd(home: string, v: Values, json: boolean): number {
  const format = (v.format as string | undefined) ?? (json ? "json" : "text");
  if (!["text", "json", "dot"].includes(format)) throw new UsageError("--format must be text, json or dot");
  const want = v.token as string | undefined;
  if (want !== undefined && !/^[0-9a-f]{4,32}$/.test(want))
    throw new UsageError(`--token must be a token id or a prefix of one (4 to 32 hex digits; got ${JSON.stringify(want)})`);
  const reader = openHome(home);
  try {
    const nodes = tokenTree(reader);
    let only: string | undefined;
    if (want !== undefined) {
      const hits = [...nodes.keys()].filter((id) => id.startsWith(want));
      if (hits.length === 0)
        throw new UsageError(
          `no token ${want} in this home's token table or records (a copy narrowed offline is in them once it authorized a request; a refusal of one names the token it was narrowed from: kpip audit timeline --token ${want})`,
        );
      if (hits.length > 1)
        throw new UsageError(
          `--token ${want} names ${hits.length} tokens (${hits.slice(0, 5).join(", ")}…): give more of the id`,
        );
      only = hits[0];
    }
    const items = walk(nodes, only);
    if (format === "json") for (const i of items) process.stdout.write(`${JSON.stringify(nodeJson(i.node, i.depth))}\n`);
    else if (format === "dot") process.stdout.write(treeDot(items));
    else process.stdout.write(treeText(items, nodes));
    journalNote(reader, format === "json");
    return EXIT.OK;
  } finally {
    reader.close();
  }
}
