import type { CasResult, ObjectBody, ObjectMeta, ObjectStore, PreviousObject, StoredObject } from "../types.js";
import type { Row, Statement, StoreBase, WithRows } from "./base.js";

/** Deleted paths whose last generation a workspace keeps one row each for, before they are folded into its floor. */
export const DELETED_PATHS_KEPT = 1024;

/** Storage objects: inline bodies, or the hash of a body in the file store. */
export function ObjectRows<B extends StoreBase>(Base: B): WithRows<B, ObjectStore> {
  return class ObjectRows extends Base implements ObjectStore {
    readonly #read: Statement = this.db.prepare("SELECT * FROM objects WHERE workspace = ? AND path = ?");
    readonly #stat: Statement = this.db.prepare(
      "SELECT workspace, path, generation, size, updated_at, owner FROM objects WHERE workspace = ? AND path = ?",
    );
    readonly #gen: Statement = this.db.prepare(
      "SELECT generation, size, owner, hash FROM objects WHERE workspace = ? AND path = ?",
    );
    readonly #upsert: Statement = this.db.prepare(
      "INSERT INTO objects (workspace, path, data, generation, size, updated_at, owner, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?) " +
        "ON CONFLICT (workspace, path) DO UPDATE SET data = excluded.data, generation = excluded.generation, " +
        "size = excluded.size, updated_at = excluded.updated_at, owner = excluded.owner, hash = excluded.hash",
    );
    readonly #bodyRefs: Statement = this.db.prepare("SELECT count(*) AS n FROM objects WHERE hash = ?");
    readonly #naming: Statement = this.db.prepare("SELECT workspace, path, size FROM objects WHERE hash = ? LIMIT 1");
    readonly #countBodies: Statement = this.db.prepare("SELECT count(DISTINCT hash) AS n FROM objects WHERE hash IS NOT NULL");
    // SQLite gives a bare column beside min() the row min() came from: one object per body.
    readonly #bodies: Statement = this.db.prepare(
      "SELECT hash, workspace, path, min(size) AS size FROM objects WHERE hash IS NOT NULL GROUP BY hash",
    );
    readonly #delete: Statement = this.db.prepare("DELETE FROM objects WHERE workspace = ? AND path = ?");
    // The last generation of each deleted path: a path written again continues after it, so a
    // generation never names two versions (an ifGeneration read or write across a delete and a
    // re-creation would otherwise match bytes its caller never saw).
    readonly #lastGen: Statement = this.db.prepare("SELECT generation FROM object_generations WHERE workspace = ? AND path = ?");
    readonly #keepGen: Statement = this.db.prepare(
      "INSERT INTO object_generations (workspace, path, generation) VALUES (?, ?, ?) " +
        "ON CONFLICT (workspace, path) DO UPDATE SET generation = max(generation, excluded.generation)",
    );
    readonly #forgetGen: Statement = this.db.prepare("DELETE FROM object_generations WHERE workspace = ? AND path = ?");
    // Past DELETED_PATHS_KEPT rows in a workspace they are folded into its floor, the highest
    // generation they held: a path absent without a row starts after the floor. So a persona
    // deleting unique paths grows no table (one row per workspace past the bound), and new paths
    // start at 1 until a workspace has had that many deletes.
    readonly #floor: Statement = this.db.prepare("SELECT floor FROM generation_floors WHERE workspace = ?");
    readonly #raiseFloor: Statement = this.db.prepare(
      "INSERT INTO generation_floors (workspace, floor) VALUES (?, ?) " +
        "ON CONFLICT (workspace) DO UPDATE SET floor = max(floor, excluded.floor)",
    );
    readonly #keptGens: Statement = this.db.prepare(
      "SELECT count(*) AS n, coalesce(max(generation), 0) AS top FROM object_generations WHERE workspace = ?",
    );
    readonly #dropGens: Statement = this.db.prepare("DELETE FROM object_generations WHERE workspace = ?");
    readonly #list: Statement = this.db.prepare(
      "SELECT workspace, path, generation, size, updated_at, owner FROM objects WHERE workspace = ? AND path >= ? AND path < ? AND path > ? ORDER BY path LIMIT ?",
    );

    readObject(workspace: string, path: string): StoredObject | undefined {
      const r = this.#read.get(workspace, path) as Row | undefined;
      return r && { ...toMeta(r), data: r.data as Uint8Array, hash: (r.hash as Uint8Array | null) ?? null };
    }
    statObject(workspace: string, path: string): ObjectMeta | undefined {
      const r = this.#stat.get(workspace, path) as Row | undefined;
      return r && toMeta(r);
    }
    writeObject(
      workspace: string,
      path: string,
      body: ObjectBody,
      ifGeneration: number | undefined,
      now: number,
      owner: string,
    ): CasResult {
      const prev = this.#gen.get(workspace, path) as Row | undefined;
      const current = (prev?.generation as number | undefined) ?? 0;
      if (ifGeneration !== undefined && ifGeneration !== current) return { ok: false, current };
      // Absent (ifGeneration 0 matches), but perhaps deleted before: after its last generation,
      // or after the workspace's floor once its rows were folded into it.
      let last = current;
      if (!prev) {
        const gone = this.#lastGen.get(workspace, path) as Row | undefined;
        if (gone) {
          last = gone.generation as number;
          this.#forgetGen.run(workspace, path);
        } else last = ((this.#floor.get(workspace) as Row | undefined)?.floor as number | undefined) ?? 0;
      }
      const generation = last + 1;
      // A body in the file store leaves an empty inline column (the column predates the file store and is NOT NULL).
      if ("data" in body) {
        const bytes = Buffer.from(body.data.buffer, body.data.byteOffset, body.data.length);
        this.#upsert.run(workspace, path, bytes, generation, body.data.length, now, owner, null);
      } else this.#upsert.run(workspace, path, EMPTY, generation, body.size, now, owner, Buffer.from(body.hash));
      return { ok: true, generation, previous: prev ? toPrevious(prev) : undefined };
    }
    countBodyRefs(hash: Uint8Array): number {
      return (this.#bodyRefs.get(Buffer.from(hash)) as { n: number }).n;
    }
    objectNaming(hash: Uint8Array): { workspace: string; path: string; size: number } | undefined {
      const r = this.#naming.get(Buffer.from(hash)) as Row | undefined;
      return r && { workspace: r.workspace as string, path: r.path as string, size: r.size as number };
    }
    countBodies(): number {
      return (this.#countBodies.get() as { n: number }).n;
    }
    *namedBodies(): Iterable<{ hash: Buffer; workspace: string; path: string; size: number }> {
      for (const r of this.#bodies.iterate() as Iterable<Row>)
        yield { hash: r.hash as Buffer, workspace: r.workspace as string, path: r.path as string, size: r.size as number };
    }
    deleteObject(workspace: string, path: string, ifGeneration: number | undefined): CasResult | undefined {
      const prev = this.#gen.get(workspace, path) as Row | undefined;
      if (prev === undefined) return undefined;
      const current = prev.generation as number;
      if (ifGeneration !== undefined && ifGeneration !== current) return { ok: false, current };
      this.#delete.run(workspace, path);
      this.#keepDeleted(workspace, path, current);
      return { ok: true, generation: current, previous: toPrevious(prev) };
    }
    /** Remembers a deleted path's last generation; past DELETED_PATHS_KEPT rows in its workspace, folds them into its floor. */
    #keepDeleted(workspace: string, path: string, generation: number): void {
      this.#keepGen.run(workspace, path, generation);
      // Counted, not kept in a column: at most DELETED_PATHS_KEPT + 1 rows, by the primary key.
      const kept = this.#keptGens.get(workspace) as Row;
      if ((kept.n as number) <= DELETED_PATHS_KEPT) return;
      this.#dropGens.run(workspace);
      this.#raiseFloor.run(workspace, kept.top);
    }
    listObjects(workspace: string, prefix: string, after: string | undefined, limit: number): ObjectMeta[] {
      // [prefix, prefix + U+FFFF) covers every path starting with prefix in SQLite's binary collation.
      const rows = this.#list.all(workspace, prefix, `${prefix}\uffff`, after ?? "", limit) as Row[];
      return rows.map(toMeta);
    }
  };
}

function toMeta(r: Row): ObjectMeta {
  return {
    workspace: r.workspace as string,
    path: r.path as string,
    owner: (r.owner as string | undefined) ?? "",
    generation: r.generation as number,
    size: r.size as number,
    updatedAt: r.updated_at as number,
  };
}

const EMPTY = Buffer.alloc(0);

function toPrevious(r: Row): PreviousObject {
  return { size: r.size as number, owner: r.owner as string, hash: (r.hash as Uint8Array | null) ?? null };
}
