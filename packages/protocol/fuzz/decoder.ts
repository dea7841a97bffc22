/**
 * `npm run fuzz:decoder -- --iterations N [--seed S] [--out DIR]`
 * Prints a summary line; saves each finding as <out>/<n>.hex and <n>.txt; exits 1 on findings.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fuzz } from "./engine.js";

const arg = (name: string, dflt: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? (process.argv[i + 1] ?? dflt) : dflt;
};
const iterations = Number(arg("iterations", "100000"));
const seed = Number(arg("seed", String(Date.now() % 2 ** 31)));
const out = arg("out", "fuzz-crashes");
if (!Number.isSafeInteger(iterations) || iterations <= 0 || !Number.isSafeInteger(seed)) {
  console.error("usage: fuzz:decoder -- --iterations N [--seed S] [--out DIR]");
  process.exit(2);
}
const started = Date.now();
const r = fuzz({
  iterations,
  seed,
  onProgress: (done, found) => process.stderr.write(`fuzz: ${done}/${iterations} iterations, ${found} findings\n`),
});
const secs = (Date.now() - started) / 1000;
if (r.findings.length) {
  mkdirSync(out, { recursive: true });
  r.findings.forEach((f, i) => {
    writeFileSync(join(out, `${i}.hex`), Buffer.from(f.input).toString("hex"));
    writeFileSync(join(out, `${i}.txt`), `${f.kind}\n${f.signature}\n${f.message}\n`);
  });
}
console.log(
  `fuzz:decoder seed=${seed} iterations=${iterations} findings=${r.findings.length} seconds=${secs.toFixed(1)} rate=${Math.round(iterations / secs)}/s`,
);
process.exit(r.findings.length ? 1 : 0);
