/**
 * Small helpers shared by the wire-level integration tests (on top of harness.ts):
 * building REQUEST frames by hand, a HELLO with any key and instance, audit polling.
 */
import {
  attestationTranscript,
  encodeIntent,
  encodeMessage,
  HEADER_SIZE,
  type Identity,
  type Intent,
  type Message,
  signBytes,
} from "@kpip/protocol";
import type { Kernel } from "../src/index.js";
import type { AuditRow } from "../src/store/types.js";
import { type RawPeer, until } from "./harness.js";

/** One REQUEST frame (stream = id), from an intent or hand-made intent bytes. */
export function requestFrame(
  id: number,
  intent: Intent | Uint8Array,
  opts: { persona?: string; ctxPersona?: string; workspace?: string; caps?: (number | Uint8Array)[]; version?: number } = {},
): Uint8Array {
  const persona = opts.persona ?? "admin";
  const context: { persona: string; workspace?: string } = { persona: opts.ctxPersona ?? persona };
  if (opts.workspace !== undefined) context.workspace = opts.workspace;
  return encodeMessage(
    {
      type: "REQUEST",
      body: {
        version: opts.version ?? 1,
        persona,
        id,
        intent: intent instanceof Uint8Array ? intent : encodeIntent(intent),
        context,
        caps: opts.caps ?? [1],
      },
    },
    id,
  );
}

/**
 * Sends a HELLO naming `persona` with `publicKey` (any key, registered or not) and waits for
 * the CHALLENGE. Returns the HELLO and CHALLENGE body bytes, from which the transcript is built.
 */
export async function helloAs(
  p: RawPeer,
  persona: string,
  publicKey: Uint8Array,
  instance: Uint8Array = Buffer.alloc(16, 7),
): Promise<{ session: string; helloBytes: Buffer; challengeBytes: Buffer }> {
  const hello: Message = { type: "HELLO", body: { versions: [1], persona, publicKey, instance, features: [] } };
  const f = encodeMessage(hello);
  p.send(f);
  const challenge = await p.next("CHALLENGE");
  return {
    session: challenge.body.session,
    helloBytes: Buffer.from(f.subarray(HEADER_SIZE)),
    challengeBytes: Buffer.from(encodeMessage(challenge).subarray(HEADER_SIZE)),
  };
}

/** A correct ATTEST signature by `signer` for this HELLO/CHALLENGE pair. */
export function attestSignature(signer: Identity, helloBytes: Buffer, challengeBytes: Buffer): Buffer {
  return signBytes(signer.privateKey, attestationTranscript(helloBytes, challengeBytes));
}

/** Every audit record so far (queryAudit's default limit is 100). */
export function allAudit(k: Kernel): AuditRow[] {
  return k.inspect.queryAudit({ limit: 1_000_000 });
}

/** Waits until an audit record matching `pred` is committed, and returns it. */
export function auditRecord(k: Kernel, pred: (r: AuditRow) => boolean, what = "audit record"): Promise<AuditRow> {
  return until(() => allAudit(k).find(pred), 5000, what);
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
