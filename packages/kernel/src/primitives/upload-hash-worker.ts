import { parentPort } from "node:worker_threads";
import { RangeHashes } from "./upload-hasher.js";

/** The upload hash worker (see UploadHasher): messages in order, one reply per range or digest. */
const hashes = new RangeHashes();
parentPort?.on("message", (m: { kind: string; seq: number; key: string; fd: number; offset: number; length: number }) => {
  try {
    if (m.kind === "forget") hashes.forget(m.key);
    else if (m.kind === "digest") parentPort?.postMessage({ seq: m.seq, digest: hashes.digest(m.key, m.length) });
    else {
      hashes.range(m.key, m.fd, m.offset, m.length);
      parentPort?.postMessage({ seq: m.seq });
    }
  } catch (e) {
    // This upload's hash is unusable from here: it is forgotten, and its next range fails too.
    hashes.forget(m.key);
    parentPort?.postMessage({ seq: m.seq, error: (e as Error).message });
  }
});
