import type { KernelClient } from "@kpip/client";
import type { CborValue, Identity, Limits, Right } from "@kpip/protocol";

/** What an attack gets: a live kernel in its own process and a way to make personas. */
export interface AttackContext {
  socket: string;
  home: string;
  /** The kernel's pid (attacks never signal it; the runner watches it). */
  pid: number;
  /** The admin, for setup and for checks the attack makes at its end. */
  admin: KernelClient;
  /** Registers a persona with a token of `rights` and connects it (reconnect off, one attempt). */
  persona(
    id: string,
    rights: Right[],
    limits?: Limits,
  ): Promise<{ identity: Identity; token: Uint8Array; connect(tokens?: Uint8Array[]): Promise<KernelClient> }>;
  /** Aborts when the attack's time is up: stop, release what you hold, return. */
  signal: AbortSignal;
}

/** What an attack reports: a line for the table and whether its own check held. */
export interface AttackResult {
  note: string;
  /** False when the attack's own check failed (e.g. a bound that did not hold). */
  ok: boolean;
}

/** One attack of issue #15: runs until `ctx.signal` aborts. */
export interface Attack {
  name: string;
  /** The finding of issue #15 it reproduces. */
  finding: number;
  summary: string;
  run(ctx: AttackContext): Promise<AttackResult>;
}

export const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });

/** Runs `f` with `n` workers until the signal aborts; returns how many calls settled each way. */
export async function hammer(
  signal: AbortSignal,
  n: number,
  f: (i: number) => Promise<unknown>,
): Promise<{ ok: number; failed: number; errors: Map<string, number> }> {
  const out = { ok: 0, failed: 0, errors: new Map<string, number>() };
  let i = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (!signal.aborted) {
        try {
          await f(i++);
          out.ok++;
        } catch (e) {
          out.failed++;
          const k = (e as { errorClass?: string }).errorClass ?? (e as Error).name;
          out.errors.set(k, (out.errors.get(k) ?? 0) + 1);
        }
      }
    }),
  );
  return out;
}

export const errorSummary = (m: Map<string, number>) => [...m].map(([k, v]) => `${k} ${v}`).join(", ") || "none";

/** The abuse attacks' raw connection: the tests' wire-level peer. */
export { RawPeer as RawConn, requestFrame } from "../../test/wire.js";

export type { CborValue };
