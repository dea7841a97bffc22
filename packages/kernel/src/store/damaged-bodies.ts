import type { KernelRecords } from "../audit/kernel-records.js";
import type { Logger } from "../log.js";
import { type BlobStore, DamagedBodyError } from "./blobs.js";
import type { ObjectStore } from "./types.js";

/** The most damaged bodies put on the record one by one in a run; past it the start's log line counts them. */
export const DAMAGED_BODIES_RECORDED = 256;

type Objects = Pick<ObjectStore, "countBodyRefs" | "objectNaming" | "countBodies" | "namedBodies">;

/**
 * Bodies in the file store that are not what their rows say (missing, or of another size): each
 * is logged and put on the record (`storage.damaged`) once per run, found by the start's sweep
 * (a stat of each body, which the sweep makes anyway) or by the first read that meets it.
 */
export class DamagedBodies {
  readonly #told = new Set<string>();

  constructor(
    private readonly objects: Objects,
    private readonly records: Pick<KernelRecords, "record">,
    private readonly log: Logger,
  ) {}

  /**
   * At start: removes the bodies no row names (BlobStore.sweep) and reports those that are damaged.
   * Bodies rows name but no file holds are counted with one query, and looked for only when some are missing.
   */
  sweep(blobs: BlobStore): { removed: number; damaged: number } {
    const { removed, named, damaged } = blobs.sweep((h) => this.objects.objectNaming(h)?.size);
    if (named < this.objects.countBodies()) {
      for (const b of this.objects.namedBodies())
        if (!blobs.has(b.hash)) damaged.push(new DamagedBodyError(b.hash, b.size, null));
    }
    // Reported once the listing is done (the record's append uses the database too).
    for (const e of damaged) this.report(e);
    if (damaged.length)
      this.log.error(
        { bodies: damaged.length },
        "object bodies are damaged (missing, or of another size than recorded): reads of the objects naming them fail until the files are restored",
      );
    return { removed, damaged: damaged.length };
  }

  /** Logs and records `e` unless this run did already; `target`: the object a read met it at (else one naming it). */
  report(e: DamagedBodyError, target?: string): void {
    const hex = e.hash.toString("hex");
    if (this.#told.has(hex)) return;
    // Past the bound a read's damage is not logged either: reads a persona repeats must not fill the log.
    if (this.#told.size >= DAMAGED_BODIES_RECORDED) return;
    this.#told.add(hex);
    const o = this.objects.objectNaming(e.hash);
    const at = target ?? (o ? `obj://${o.workspace}/${o.path}` : "kernel://");
    const message = `${e.message}: the objects naming it cannot be read until the file is restored`;
    this.log.error({ body: hex, size: e.size, found: e.found, target: at }, message);
    this.records.record({
      op: "storage.damaged",
      target: at,
      message,
      detail: { body: hex, size: e.size, found: e.found, objects: this.objects.countBodyRefs(e.hash) },
    });
  }
}
