/**
 * `npm run fuzz:kernel -- --frames N [--seed S] [--conns C] [--max-rss-mb M] [--json] [--out DIR]`
 *
 * Live fuzzing of a real kernel (its own process, a temp home): hostile connections send
 * mutated frames — before the handshake, after it, and valid REQUEST frames whose intent bytes
 * are mutated — while a legitimate client keeps writing, reading back and checking objects.
 * The run fails (exit 1) if the kernel dies, the legitimate client sees a single failure or a
 * wrong value, the kernel's RSS passes the bound, the kernel does not stop cleanly at the end,
 * or the audit chain does not verify. The last frames sent before a failure are saved to
 * --out as hex, to become regression tests.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { KernelClient, loadIdentity } from "@kpip/client";
import {
  attestationTranscript,
  type CborValue,
  decodeMessage,
  encodeIntent,
  encodeMessage,
  FrameDecoder,
  HEADER_SIZE,
  type Identity,
  type Message,
  signBytes,
} from "@kpip/protocol";
import { outputIncludes } from "@kpip/protocol/testing";
import { verifyAudit } from "../src/audit/verify.js";
import { SqliteStore } from "../src/store/sqlite.js";
import { rssMb } from "./proc.js";

type Rand = () => number;
// The decoder fuzzer's mutation engine (a dev tool outside this package's sources).
const engine = (await import(new URL("../../../protocol/dist/fuzz/engine.js", import.meta.url).href)) as {
  mutate: (src: Uint8Array, r: Rand) => Uint8Array;
  prng: (seed: number) => Rand;
};

const argv = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? (argv[i + 1] ?? dflt) : dflt;
};
const int = (name: string, dflt: number) => {
  const v = Number(opt(name, String(dflt)));
  if (!Number.isSafeInteger(v) || v < 0) {
    console.error(`--${name} must be a non-negative integer`);
    process.exit(2);
  }
  return v;
};
const FRAMES = int("frames", 100_000);
const SEED = int("seed", Date.now() % 2 ** 31);
const CONNS = Math.max(1, int("conns", 6));
const MAX_RSS_MB = int("max-rss-mb", 400);
const JSON_OUT = argv.includes("--json");
const OUT = opt("out", "fuzz-kernel-crashes");
const MAIN = fileURLToPath(new URL("../../../cli/dist/src/main.js", import.meta.url));

const rand = engine.prng(SEED);
const pick = (n: number) => Math.floor(rand() * n);

// ---- the kernel under test ---------------------------------------------------------------

const home = mkdtempSync(join(tmpdir(), "kpip-fuzz-"));
const socket = join(home, "kernel.sock");
const kernel: ChildProcess = spawn(
  process.execPath,
  [MAIN, "kernel", "--home", home, "--log-level", "silent", "--handshake-timeout-ms", "2000", "--max-sessions", "256"],
  { stdio: ["ignore", "pipe", "inherit"] },
);
// However the run ends (a throw, or a SIGTERM such as a test's spawn timeout), its kernel goes with it.
process.once("exit", () => {
  if (kernel.exitCode === null && kernel.signalCode === null) kernel.kill("SIGKILL");
});
for (const sig of ["SIGTERM", "SIGINT"] as const) process.once(sig, () => process.exit(1));
let kernelExit: string | undefined;
kernel.once("exit", (code, signal) => {
  kernelExit = `kernel exited (code ${code}, signal ${signal})`;
});
await outputIncludes(kernel, "is running");

const cli = (...a: string[]) => {
  const r = spawnSync(process.execPath, [MAIN, ...a, "--home", home, "--json"], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`kpip ${a.join(" ")}: ${r.stderr}`);
  return JSON.parse(r.stdout) as Record<string, unknown>;
};
const admin = await KernelClient.connect({
  socket,
  identity: join(home, "admin.identity"),
  tokens: [readFileSync(join(home, "admin.token"), "utf8")],
  reconnect: false,
});
// The hostile persona: a real identity and a token for its own workspace only.
const mal = cli("persona", "create", "mallory");
const malIdentity: Identity = loadIdentity(mal.identity as string);
const malToken = (
  await admin.tokens.mint("mallory", {
    rights: [{ ops: ["storage.*", "event.*", "system.*"], targets: ["obj://mal/**", "topic://mal/**", "kernel://"] }],
    ttlMs: 24 * 3_600_000,
  })
).token;

// ---- seeds -------------------------------------------------------------------------------

const INTENTS: Uint8Array[] = (
  [
    { op: "storage.write", target: "obj://mal/a/b", args: { data: new Uint8Array(64).fill(1) } },
    { op: "storage.read", target: "obj://mal/a/b" },
    { op: "storage.list", target: "obj://mal", args: { limit: 5 } },
    { op: "storage.write", target: "obj://legit/k1", args: { data: new Uint8Array(8) } },
    { op: "event.emit", target: "topic://mal/x", args: { data: { n: 1, s: "x" } } },
    { op: "event.subscribe", target: "topic://mal/**" },
    { op: "system.health", target: "kernel://" },
    { op: "token.mint", target: "persona://mallory", args: { rights: [], ttlMs: 1 } },
  ] as { op: string; target: string; args?: Record<string, CborValue> }[]
).map((i) => encodeIntent({ ...i, args: i.args ?? {} }));

const request = (id: number, intent: Uint8Array, caps: CborValue[] = [1]): Message => ({
  type: "REQUEST",
  body: { version: 1, persona: "mallory", id, intent, context: { persona: "mallory" }, caps: caps as number[] },
});

const PRE_SEEDS: Uint8Array[] = [
  encodeMessage({
    type: "HELLO",
    body: { versions: [1], persona: "mallory", publicKey: malIdentity.publicKey, instance: new Uint8Array(16), features: [] },
  }),
  encodeMessage({ type: "ATTEST", body: { signature: new Uint8Array(64), tokens: [malToken] } }),
  encodeMessage(request(1, INTENTS[0] as Uint8Array)),
  encodeMessage({ type: "PING", body: { seq: 1 } }),
];

// ---- bookkeeping -------------------------------------------------------------------------

const stats = {
  framesSent: 0,
  mutatedIntents: 0,
  mutatedFrames: 0,
  preHandshake: 0,
  connections: 0,
  closedByKernel: 0,
  responses: 0,
  legitOk: 0,
  legitFailures: 0,
  maxRssMb: 0,
  startRssMb: 0,
};
const recent: string[] = [];
const remember = (b: Uint8Array) => {
  recent.push(Buffer.from(b).toString("hex"));
  if (recent.length > 256) recent.shift();
};
const failures: string[] = [];
const fail = (why: string) => {
  if (failures.length < 20) failures.push(why);
};

const kernelRssMb = (): number => rssMb(kernel.pid);

// ---- hostile connections -----------------------------------------------------------------

/** One hostile connection: connects, maybe handshakes, sends mutated frames until closed or done. */
async function hostile(): Promise<void> {
  const sock = net.connect(socket);
  stats.connections++;
  const decoder = new FrameDecoder();
  let closed = false;
  const frames: Message[] = [];
  sock.on("data", (d) => {
    try {
      for (const f of decoder.push(d)) {
        frames.push(decodeMessage(f));
      }
    } catch {
      // the kernel's answers are well-formed; our decoder is not under test here
    }
  });
  sock.on("error", () => {});
  sock.on("close", () => {
    closed = true;
  });
  await new Promise<void>((resolve) => {
    sock.once("connect", () => resolve());
    sock.once("close", () => resolve());
  });
  const send = (b: Uint8Array) => {
    remember(b);
    stats.framesSent++;
    if (!closed) sock.write(b);
  };
  const waitFor = async (pred: () => boolean, ms: number) => {
    const until = Date.now() + ms;
    while (!pred() && !closed && Date.now() < until) await new Promise((r) => setTimeout(r, 2));
  };

  if (rand() < 0.25) {
    // Before the handshake: one mutated frame, then see the kernel close or time us out.
    stats.preHandshake++;
    send(engine.mutate(PRE_SEEDS[pick(PRE_SEEDS.length)] as Uint8Array, rand));
    await waitFor(() => false, 30);
    sock.destroy();
    return;
  }

  // A real handshake as mallory.
  const hello = encodeMessage({
    type: "HELLO",
    body: { versions: [1], persona: "mallory", publicKey: malIdentity.publicKey, instance: new Uint8Array(16), features: [] },
  });
  send(hello);
  await waitFor(() => frames.some((m) => m.type === "CHALLENGE"), 2000);
  const challenge = frames.find((m) => m.type === "CHALLENGE");
  if (!challenge) {
    sock.destroy();
    return;
  }
  const challengeBytes = Buffer.from(encodeMessage(challenge).subarray(HEADER_SIZE));
  const signature = signBytes(malIdentity.privateKey, attestationTranscript(hello.subarray(HEADER_SIZE), challengeBytes));
  send(encodeMessage({ type: "ATTEST", body: { signature, tokens: [malToken] } }));
  await waitFor(() => frames.some((m) => m.type === "WELCOME"), 2000);
  if (!frames.some((m) => m.type === "WELCOME")) {
    sock.destroy();
    return;
  }

  let id = 1;
  let expected = 0;
  while (!closed && stats.framesSent < FRAMES && !kernelExit) {
    const batch = 1 + pick(32);
    for (let i = 0; i < batch; i++) {
      const r = rand();
      if (r < 0.97) {
        // A valid frame carrying mutated intent bytes (or mutated caps): the session must survive.
        stats.mutatedIntents++;
        const intent = engine.mutate(INTENTS[pick(INTENTS.length)] as Uint8Array, rand);
        const caps: CborValue[] = rand() < 0.1 ? [pick(5), engine.mutate(malToken, rand)] : [1];
        send(encodeMessage(request(id++, intent, caps), id));
        expected++;
      } else {
        // A mutated whole frame: the kernel may close the session; it must keep serving others.
        stats.mutatedFrames++;
        const base = rand() < 0.5 ? encodeMessage(request(id++, INTENTS[pick(INTENTS.length)] as Uint8Array)) : hello;
        send(engine.mutate(base, rand));
      }
    }
    await waitFor(() => frames.filter((m) => m.type === "RESPONSE").length >= expected, 500);
  }
  stats.responses += frames.filter((m) => m.type === "RESPONSE").length;
  if (closed) stats.closedByKernel++;
  sock.destroy();
}

// ---- the legitimate client ---------------------------------------------------------------

let running = true;
let legitMaxMs = 0;
async function legit(): Promise<void> {
  const identity = loadIdentity(join(home, "admin.identity"));
  const c = await KernelClient.connect({
    socket,
    identity,
    tokens: [readFileSync(join(home, "admin.token"), "utf8")],
    reconnect: false,
  });
  let n = 0;
  while (running && !kernelExit) {
    const key = `obj://legit/k${n % 500}`;
    const value = Buffer.from(`value-${n}-${SEED}`);
    const t = Date.now();
    try {
      await c.storage.write(key, value);
      const back = await c.storage.read(key);
      if (!Buffer.from(back.data).equals(value)) fail(`legit read of ${key} returned the wrong value`);
      if ((await c.system.health()).status !== "ok") fail("system.health not ok");
      stats.legitOk++;
    } catch (e) {
      stats.legitFailures++;
      fail(`legit client: ${(e as Error).name}: ${(e as Error).message}`);
    }
    legitMaxMs = Math.max(legitMaxMs, Date.now() - t);
    n++;
    // Paced, so the hostile side gets the CPU: the point is that the kernel keeps answering.
    await new Promise((r) => setTimeout(r, 1));
  }
  await c.close();
}

// ---- run ---------------------------------------------------------------------------------

const started = Date.now();
stats.startRssMb = kernelRssMb();
const sampler = setInterval(() => {
  const r = kernelRssMb();
  stats.maxRssMb = Math.max(stats.maxRssMb, r);
  if (r > MAX_RSS_MB) fail(`kernel RSS ${r.toFixed(0)} MB over the bound ${MAX_RSS_MB} MB`);
  if (!JSON_OUT) {
    process.stderr.write(
      `\rfuzz:kernel ${stats.framesSent}/${FRAMES} frames, ${stats.connections} conns, legit ok ${stats.legitOk}, rss ${r.toFixed(0)} MB   `,
    );
  }
}, 500);
const legitDone = legit();
await Promise.all(
  Array.from({ length: CONNS }, async () => {
    while (stats.framesSent < FRAMES && !kernelExit) await hostile();
  }),
);
running = false;
await legitDone;
clearInterval(sampler);
if (!JSON_OUT) process.stderr.write("\n");
if (kernelExit) fail(kernelExit);

// The kernel must still stop cleanly, and its audit chain verify.
await admin.close().catch(() => {});
let exitCode: number | null = null;
if (!kernelExit) {
  kernel.kill("SIGTERM");
  exitCode = await new Promise<number | null>((r) => kernel.once("exit", (c) => r(c)));
  if (exitCode !== 0) fail(`kernel exited ${exitCode} on SIGTERM`);
}
const store = new SqliteStore(join(home, "kernel.db"));
const v = verifyAudit(store);
store.close();
if (!v.ok) fail(`audit verify failed: ${v.firstBad?.reason}`);

const secs = (Date.now() - started) / 1000;
const summary = {
  seed: SEED,
  frames: stats.framesSent,
  mutatedIntents: stats.mutatedIntents,
  mutatedFrames: stats.mutatedFrames,
  preHandshake: stats.preHandshake,
  connections: stats.connections,
  sessionsClosedByKernel: stats.closedByKernel,
  responses: stats.responses,
  legitRounds: stats.legitOk,
  legitFailures: stats.legitFailures,
  legitMaxMs,
  rssStartMb: Math.round(stats.startRssMb),
  rssMaxMb: Math.round(stats.maxRssMb),
  auditRecords: v.records,
  seconds: Math.round(secs * 10) / 10,
  framesPerSecond: Math.round(stats.framesSent / secs),
  failures,
};
if (failures.length) {
  mkdirSync(OUT, { recursive: true });
  writeFileSync(join(OUT, `seed-${SEED}.frames.hex`), `${recent.join("\n")}\n`);
  writeFileSync(join(OUT, `seed-${SEED}.txt`), `${failures.join("\n")}\n`);
}
if (JSON_OUT) console.log(JSON.stringify(summary));
else {
  console.log(
    `fuzz:kernel seed=${SEED} frames=${summary.frames} (intents ${summary.mutatedIntents}, frames ${summary.mutatedFrames}, pre-handshake ${summary.preHandshake}) ` +
      `connections=${summary.connections} legit=${summary.legitRounds} ok/${summary.legitFailures} failed (max ${legitMaxMs} ms) ` +
      `rss=${summary.rssStartMb}→${summary.rssMaxMb} MB audit=${summary.auditRecords} records ${summary.seconds}s ${summary.framesPerSecond} frames/s`,
  );
  for (const f of failures) console.log(`FAIL ${f}`);
}
if (!kernelExit && exitCode === null) kernel.kill("SIGKILL");
rmSync(home, { recursive: true, force: true });
process.exit(failures.length ? 1 : 0);
