import type { AuditReader, AuditRecord } from "@kpip/kernel";
import { bitsOf, Decoder, eachEntry, MAYBE, mayHold, memo, NO, smallValue, YES } from "./index-read.js";
import { type AuditIndex, NULL_ID } from "./index-store.js";

/** `kpip audit query`'s filters, as tests of a decoded record and as their parts the index decides. */
export interface QueryFilter {
  persona?: (v: string | null) => boolean;
  op?: (v: string | null) => boolean;
  status?: string;
  since?: number;
}

export function queryTest(q: QueryFilter): (r: AuditRecord) => boolean {
  return (r) =>
    (q.persona === undefined || q.persona(r.persona)) &&
    (q.op === undefined || q.op(r.op)) &&
    (q.status === undefined || r.status === q.status) &&
    (q.since === undefined || r.time >= q.since);
}

/** The newest `limit` matching records and how many match: by the full scan, or from the index without decoding the rest. */
export function queryRecords(
  reader: AuditReader,
  idx: AuditIndex | undefined,
  q: QueryFilter,
  limit: number,
): { rows: AuditRecord[]; total: number } {
  const test = queryTest(q);
  let total = 0;
  if (!idx) {
    let kept: AuditRecord[] = [];
    for (const r of reader.records()) {
      if (!test(r)) continue;
      total++;
      kept.push(r);
      if (kept.length >= 2 * limit) kept = kept.slice(-limit);
    }
    return { rows: kept.slice(-limit), total };
  }
  const dec = new Decoder(reader);
  const d = idx.dicts;
  const persona = q.persona && memo(d.persona, q.persona);
  const op = q.op && memo(d.op, q.op);
  const opTest =
    op && q.op ? (id: number) => (id === NULL_ID ? ((q.op as (v: null) => boolean)(null) ? YES : NO) : op(id)) : undefined;
  // A chunk whose summary holds no persona (op) the filter lets through, or only older times, is not read.
  const personaBits = persona && idx.chunkCount > 1 ? bitsOf(d.persona, persona) : undefined;
  const opBits = opTest && idx.chunkCount > 1 ? bitsOf(d.op, opTest) : undefined;
  const skip = (ci: number) => {
    const s = idx.summary(ci);
    return (
      (q.since !== undefined && s.maxTime < q.since) ||
      (personaBits !== undefined && !mayHold(s, "persona", personaBits)) ||
      (opBits !== undefined && !mayHold(s, "op", opBits))
    );
  };
  let kept: number[] = [];
  eachEntry(
    idx,
    reader.firstAuditSeq() ?? 1,
    (c, i) => {
      const seq = c.seq[i] as number;
      let k: number = YES;
      if (q.since !== undefined && (c.time[i] as number) < q.since) return true;
      if (persona) {
        const p = persona(c.persona[i] as number);
        if (p === NO) return true;
        if (p === MAYBE) k = MAYBE;
      }
      if (opTest) {
        const o = opTest(c.op[i] as number);
        if (o === NO) return true;
        if (o === MAYBE) k = MAYBE;
      }
      if (q.status !== undefined) {
        const s = smallValue(d.status, c.status[i] as number);
        if (s === undefined) k = MAYBE;
        else if (s !== q.status) return true;
      }
      if (k === MAYBE && !test(dec.get(seq))) return true;
      total++;
      kept.push(seq);
      if (kept.length >= 2 * limit) kept = kept.slice(-limit);
      return true;
    },
    skip,
  );
  return { rows: kept.slice(-limit).map((s) => dec.get(s)), total };
}
