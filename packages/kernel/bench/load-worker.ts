/**
 * One load generator: a child process of `npm run load` that runs its share of the sessions on
 * its own event loop, so 200 sessions' callbacks do not queue behind each other on one loop
 * (their delay showed in every latency measured). It records every latency, and when told to
 * stop, closes its sessions and sends them all back (raw, so the merged percentiles are exact),
 * with its errors and its own event-loop delay.
 */
import { monitorEventLoopDelay } from "node:perf_hooks";
import { KernelClient as KC, type KernelClient, loadIdentity } from "@kpip/client";

/** What load.ts gives each generator. */
export interface GeneratorInput {
  socket: string;
  /** The session numbers this generator runs (n decides persona, keys, and whether it subscribes). */
  sessions: number[];
  personas: { id: string; identityPath: string; token: Uint8Array }[];
}

/** What a generator sends back. */
export type GeneratorMessage =
  | { kind: "progress"; done: number }
  | {
      kind: "result";
      /** Latencies in µs by op, every one of them. */
      lat: Record<string, Float64Array>;
      errors: [string, number][];
      /** Its event-loop delay in ns: p50, p99, p99.9, max. */
      loopDelayNs: [number, number, number, number];
    };

/** Loop-delay percentiles to report for a generator's loop. */
function delays(h: ReturnType<typeof monitorEventLoopDelay>): [number, number, number, number] {
  return [h.percentile(50), h.percentile(99), h.percentile(99.9), h.max];
}

/** Runs `input`'s sessions until `stop` resolves; returns the run's latencies, errors and loop delay. */
export async function generate(
  input: GeneratorInput,
  stop: Promise<void>,
  onProgress?: (done: number) => void,
): Promise<Extract<GeneratorMessage, { kind: "result" }>> {
  const { socket } = input;
  const personas = input.personas.map((p) => ({ ...p, identity: loadIdentity(p.identityPath) }));
  const lat = new Map<string, number[]>();
  const errors = new Map<string, number>();
  let done = 0;
  let running = true;
  const record = (op: string, us: number) => {
    const a = lat.get(op) ?? [];
    if (a.length === 0) lat.set(op, a);
    a.push(us);
    done++;
  };
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  /** One session's life: connect, then a mixed workload with think time until the run ends. */
  async function session(n: number): Promise<void> {
    const p = personas[n % personas.length] as (typeof personas)[number];
    let c: KernelClient;
    const t0 = process.hrtime.bigint();
    try {
      c = await KC.connect({ socket, identity: p.identity, tokens: [p.token], reconnect: false });
    } catch (e) {
      // The message, not only the class: "why" is what a failed load run is read for.
      const key = `connect: ${(e as Error).name}: ${(e as Error).message.replace(/\d+/g, "N")}`;
      errors.set(key, (errors.get(key) ?? 0) + 1);
      return;
    }
    record("connect", Number(process.hrtime.bigint() - t0) / 1000);
    const sub = n % 10 === 0 ? await c.events.subscribe(`topic://${p.id}/**`) : undefined;
    const drain = sub
      ? (async () => {
          for await (const _ of sub) if (!running) break;
        })()
      : undefined;
    let i = 0;
    const written = new Set<number>();
    while (running) {
      const key = `obj://${p.id}/s${n}/k${i % 20}`;
      const r = Math.random();
      const op =
        r < 0.3
          ? "storage.write"
          : r < 0.6
            ? "storage.read"
            : r < 0.75
              ? "event.emit"
              : r < 0.85
                ? "storage.list"
                : r < 0.95
                  ? "system.health"
                  : "resource.query";
      const t = process.hrtime.bigint();
      try {
        if (op === "storage.write") {
          await c.storage.write(key, Buffer.from(`v${i}-${n}`));
          written.add(i % 20);
        } else if (op === "storage.read") {
          // Only keys this session wrote: a missing object would be a real error.
          const k = [...written][Math.floor(Math.random() * written.size)];
          if (k === undefined) await c.system.health();
          else await c.storage.read(`obj://${p.id}/s${n}/k${k}`);
        } else if (op === "event.emit") await c.events.emit(`topic://${p.id}/e${n % 7}`, { n, i });
        else if (op === "storage.list") await c.call("storage.list", `obj://${p.id}/s${n}`, { limit: 10 });
        else if (op === "system.health") await c.system.health();
        else await c.call("resource.query", `persona://${p.id}`);
        record(op, Number(process.hrtime.bigint() - t) / 1000);
      } catch (e) {
        // Grouped by op, class and message shape (numbers elided) so a systematic error is one line.
        const k = `${op}: ${(e as { errorClass?: string }).errorClass ?? (e as Error).name}: ${(e as Error).message.replace(/\d+/g, "N")}`;
        errors.set(k, (errors.get(k) ?? 0) + 1);
      }
      i++;
      await sleep(50 + Math.random() * 400);
    }
    await c.close().catch(() => {});
    await drain?.catch(() => {});
  }

  const loopDelay = monitorEventLoopDelay({ resolution: 1 });
  loopDelay.enable();
  const progress = onProgress && setInterval(() => onProgress(done), 1000);
  const sessions: Promise<void>[] = [];
  // Open sessions in waves so the connect storm itself is part of the load, not a thundering herd.
  const opening = (async () => {
    for (const [j, n] of input.sessions.entries()) {
      if (!running) break;
      sessions.push(session(n));
      if (j % 50 === 49) await sleep(20);
    }
  })();
  await stop;
  running = false;
  await opening;
  await Promise.all(sessions);
  if (progress) clearInterval(progress);
  loopDelay.disable();
  const out: Record<string, Float64Array> = {};
  for (const [op, a] of lat) out[op] = Float64Array.from(a);
  return { kind: "result", lat: out, errors: [...errors], loopDelayNs: delays(loopDelay) };
}

// As a child process (load.ts forks it with advanced serialization): its input is the first
// message, the second says stop.
const send = process.send?.bind(process);
let finished = false;
if (send) {
  // The run that forked it is gone (it failed, or was killed): so is this generator.
  process.once("disconnect", () => {
    if (!finished) process.exit(1);
  });
  const input = await new Promise<GeneratorInput>((r) => process.once("message", (m) => r(m as GeneratorInput)));
  const stop = new Promise<void>((r) => process.once("message", () => r()));
  const result = await generate(input, stop, (done) => send({ kind: "progress", done } satisfies GeneratorMessage));
  finished = true;
  send(result, undefined, undefined, () => process.disconnect());
}
