import { parentPort } from "node:worker_threads";
import { type HashAsk, RangeHashes } from "./upload-range-hashes.js";

/** The upload hash worker (see UploadHasher): messages in order, one reply per range or digest. */
const hashes = new RangeHashes();
parentPort?.on("message", (m: HashAsk) => {
  const r = hashes.answer(m);
  if (r) parentPort?.postMessage(r);
});
