import { defineOp, type FieldSpec } from "./define.js";

/* storage.* on obj://<workspace>/<path>, and the chunked upload (PROTOCOL §9.7). */

/** Most entries one storage.list page returns (the reference kernel's). */
const MAX_LIST_PAGE = 1000;

const ifGeneration = {
  type: "uint",
  description: "compare-and-set: the generation the object must have now (0: only if absent)",
} as const satisfies FieldSpec;
const generation = { type: "uint", required: true, description: "the object's generation" } as const satisfies FieldSpec;
const size = { type: "uint", required: true, description: "the object's size in bytes" } as const satisfies FieldSpec;
const upload = { type: "text", required: true, description: "the id storage.upload.begin answered" } as const satisfies FieldSpec;

export const storageWrite = defineOp({
  op: "storage.write",
  description: "Write an object. ifGeneration: 0 = only if absent, n = only if at generation n.",
  targets: ["obj"],
  args: {
    data: { type: "any", required: true, description: "the object's bytes (or UTF-8 text)" },
    ifGeneration,
  },
  result: { generation, size },
  idempotent: false,
  effects: true,
});

export const storageRead = defineOp({
  op: "storage.read",
  description:
    "Read an object's bytes and generation; offset/length read a range (objects larger than one frame are read in ranges).",
  targets: ["obj"],
  args: {
    offset: { type: "uint", description: "first byte of the range (default 0)" },
    length: { type: "uint", description: "bytes to read from offset (default: to the end; clipped to the end)" },
    ifGeneration: { type: "uint", description: "only if the object is at this generation (ranges of one version)" },
  },
  result: {
    data: { type: "bytes", required: true, description: "the bytes read" },
    generation,
    size: { type: "uint", required: true, description: "the whole object's size" },
    offset: { type: "uint", required: true, description: "where the bytes read begin" },
  },
  idempotent: true,
  effects: false,
});

export const storageStat = defineOp({
  op: "storage.stat",
  description: "An object's size, generation and last update time.",
  targets: ["obj"],
  args: {},
  result: { generation, size, updatedAt: { type: "uint", required: true, description: "last write, ms since the epoch" } },
  idempotent: true,
  effects: false,
});

export const storageList = defineOp({
  op: "storage.list",
  description:
    "List objects under obj://<workspace>[/<prefix>] in path order; PARTIAL with a cursor when more remain. Authorized on the subtree it lists: a grant must cover obj://<workspace>[/<prefix>]/**.",
  targets: ["obj"],
  reach: "subtree",
  args: {
    cursor: { type: "text", description: "the cursor of the previous page" },
    limit: { type: "uint", description: `entries per page (default 100, at most ${MAX_LIST_PAGE})` },
  },
  result: {
    items: {
      type: "array",
      required: true,
      description: "objects in path order",
      items: {
        type: "map",
        description: "an object",
        fields: { path: { type: "text", required: true, description: "its path in the workspace" }, size, generation },
      },
    },
    cursor: { type: "text", description: "PARTIAL: pass it to get the next page" },
  },
  answers: { PARTIAL: "more entries remain: the payload's `cursor` asks for the next page" },
  idempotent: true,
  effects: false,
});

export const storageDelete = defineOp({
  op: "storage.delete",
  description: "Delete an object, optionally only if at generation ifGeneration.",
  targets: ["obj"],
  args: { ifGeneration },
  result: {
    deleted: { type: "bool", required: true, description: "true" },
    generation: { type: "uint", required: true, description: "the generation the object had" },
  },
  idempotent: false,
  effects: true,
});

export const storageUploadBegin = defineOp({
  op: "storage.upload.begin",
  description: "Begin a chunked upload of an object of `size` bytes; answers the upload id. Authorized as storage.write.",
  targets: ["obj"],
  authorizeAs: "storage.write",
  args: { size: { type: "uint", required: true, description: "the whole object's size in bytes" } },
  result: { upload: { type: "text", required: true, description: "the upload's id" }, size },
  idempotent: false,
  effects: true,
});

export const storageUploadChunk = defineOp({
  op: "storage.upload.chunk",
  description: "Append `data` at `offset` (in order, no gaps or overlap) to an upload. Authorized as storage.write.",
  targets: ["obj"],
  authorizeAs: "storage.write",
  args: {
    upload,
    offset: { type: "uint", required: true, description: "where the chunk goes: the bytes received so far" },
    data: { type: "bytes", required: true, description: "the chunk" },
  },
  result: { received: { type: "uint", required: true, description: "bytes received so far" } },
  idempotent: false,
  effects: true,
});

export const storageUploadCommit = defineOp({
  op: "storage.upload.commit",
  description:
    "Make the upload the object, if its bytes have this SHA-256 and size (ifGeneration: compare-and-set). Authorized as storage.write.",
  targets: ["obj"],
  authorizeAs: "storage.write",
  args: {
    upload,
    sha256: { type: "bytes", required: true, description: "the whole object's SHA-256 (32 bytes)" },
    size: { type: "uint", required: true, description: "the whole object's size" },
    ifGeneration,
  },
  result: { generation, size, sha256: { type: "bytes", required: true, description: "the object's SHA-256" } },
  idempotent: false,
  effects: true,
});

export const storageUploadAbort = defineOp({
  op: "storage.upload.abort",
  description: "Discard an upload and its partial bytes. Authorized as storage.write.",
  targets: ["obj"],
  authorizeAs: "storage.write",
  args: { upload },
  result: { aborted: { type: "bool", required: true, description: "true" } },
  idempotent: false,
  effects: true,
});

export const storageWatch = defineOp({
  op: "storage.watch",
  description:
    "Receive EVENT frames {uri, generation, kind: write|delete} when objects matching obj://<workspace>/<path or pattern> change (a pattern of at most 32 segments and 4 *), until unwatched, the session ends or the capability that authorized it lapses (PROTOCOL §9.8). Authorized as storage.read on every object the pattern can match.",
  targets: ["obj"],
  authorizeAs: "storage.read",
  sessionState: "a watch, holding one of the session's subscription slots; its EVENTs go to the session",
  args: {},
  result: {
    subscription: { type: "uint", required: true, description: "the EVENT frames' stream and subscription" },
    pattern: { type: "text", required: true, description: "the pattern watched (the target)" },
  },
  idempotent: false,
  effects: false,
});

export const storageUnwatch = defineOp({
  op: "storage.unwatch",
  description: "End a watch of this session (target: the pattern it watches). Authorized as storage.read.",
  targets: ["obj"],
  authorizeAs: "storage.read",
  sessionState: "ends a watch of the session, whoever on it made it",
  args: { subscription: { type: "uint", required: true, description: "the id storage.watch returned" } },
  result: { unwatched: { type: "uint", required: true, description: "the watch ended" } },
  idempotent: true,
  effects: false,
});

export const storageOps = [
  storageWrite,
  storageRead,
  storageStat,
  storageList,
  storageDelete,
  storageUploadBegin,
  storageUploadChunk,
  storageUploadCommit,
  storageUploadAbort,
  storageWatch,
  storageUnwatch,
] as const;
