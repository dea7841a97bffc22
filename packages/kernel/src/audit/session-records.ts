import type { ErrorClass } from "@kpip/protocol";
import type { ConnectionOrigin } from "../session/connection.js";
import { detailJson } from "./detail.js";
import type { LiveSessions } from "./live-sessions.js";
import type { AuditEntry, AuditLog } from "./log.js";

/** A token presented at ATTEST: bound to a handle, or refused with a code (and named by its id when it decoded). */
export type AttestedToken = { handle: number; id: string } | { code: string; message: string; id?: string; unverified?: true };

/**
 * The records of one session's life (phase "session"): its open, its end, a fatal error or failed
 * handshake, and an answer withheld. Requests' records are the pipeline's. Lifecycle records are
 * fire-and-forget (what they record already happened; a closed log refuses them quietly); a
 * withheld answer's record is awaited, as every refusal's is, before the substitute is sent.
 */
export class SessionRecords {
  constructor(
    private readonly audit: AuditLog,
    private readonly session: string,
    /** Transport, peer address and TLS client certificate: structured on the open and handshake records (taken once, when first needed). */
    private readonly originOf: ConnectionOrigin | (() => ConnectionOrigin),
    /** The sessions open, kept beside the log for the start after a kill (live-sessions.ts). */
    private readonly live?: LiveSessions,
  ) {}

  private originTaken: ConnectionOrigin | undefined;
  private get origin(): ConnectionOrigin {
    this.originTaken ??= typeof this.originOf === "function" ? this.originOf() : this.originOf;
    return this.originTaken;
  }

  /**
   * WELCOME sent: where the session comes from (transport, peer, client certificate), every token presented (bound ones by handle, refused ones by what
   * they claim to be, with their class), and the ATTEST measurements — recorded, not interpreted
   * (PROTOCOL §6.5): the canonical bytes of the map as sent.
   */
  opened(
    persona: string,
    tokens: AttestedToken[],
    measurements: Uint8Array | undefined,
    /** An agent persona's: the agent and its spawn (its token id), which the persona id alone does not tell apart. */
    agent?: { agent: string; spawn: string },
    /** The public key the persona attested with: a persona id may have had other keys, before or since. */
    key?: Uint8Array,
  ): void {
    const transport = this.origin.transport;
    const caps: string[] = [];
    const handles: number[] = [];
    const refused: { index: number; code: string; token: string | null; message: string }[] = [];
    tokens.forEach((t, index) => {
      if ("handle" in t) {
        handles.push(t.handle);
        caps.push(`h${t.handle}:${t.id}`);
      } else {
        handles.push(0);
        refused.push({ index, code: t.code, token: t.id ?? null, message: t.message });
        // A signature that did not verify: the id is only claimed (see CapEnforcer.authorize).
        if (t.id !== undefined) caps.push(`${t.unverified ? "unverified" : "refused"}:${t.id}`);
      }
    });
    this.fire("opened", {
      persona,
      op: "session.open",
      status: "SUCCESS",
      caps: caps.length ? caps.join(",") : null,
      // The session opened; a token refused at the handshake is on its record, with its class and id.
      errorClass: refused.length ? "CAPABILITY" : null,
      message: refused.length
        ? `${transport}; ${refused.length} token(s) refused: ${refused
            .slice(0, 4)
            .map((r) => r.message)
            .join("; ")}${refused.length > 4 ? "; …" : ""}`
        : transport,
      detail: detailJson({
        ...this.origin,
        ...(agent ?? {}),
        ...(key ? { key: Buffer.from(key).toString("base64url") } : {}),
        handles,
        ...(refused.length ? { refused: refused.map(({ index, code, token }) => ({ index, code, token })) } : {}),
      }),
      measurements: measurements ?? null,
    });
  }

  /** A fatal ERROR on an open session: `session.error` (the cause in `detail` only). */
  failed(persona: string, cls: ErrorClass, code: string, message: string, detail?: string): void {
    this.fire("ending", {
      persona,
      op: "session.error",
      status: "FAILURE",
      errorClass: cls,
      message: detail ? `${code}: ${message}: ${detail}` : `${code}: ${message}`,
    });
  }

  /**
   * A handshake that failed before WELCOME: `session.handshake`, saying where it came from as the
   * open record does. Its persona is the attested one only when `verified` (TOO_MANY_SESSIONS);
   * otherwise the record's persona is "-" and what HELLO claimed is `detail.claimedPersona` and in
   * the message, marked unverified: anyone can claim any persona before attesting.
   */
  handshakeFailed(
    persona: string | undefined,
    verified: boolean,
    cls: ErrorClass,
    code: string,
    message: string,
    detail?: string,
  ): void {
    const claimed = !verified && persona ? persona : undefined;
    const text = detail ? `${code}: ${message}: ${detail}` : `${code}: ${message}`;
    this.fire(undefined, {
      persona: verified && persona ? persona : "-",
      op: "session.handshake",
      status: "FAILURE",
      errorClass: cls,
      message: claimed === undefined ? text : `${text} (persona ${JSON.stringify(claimed)} claimed, not verified)`,
      detail: detailJson({ ...this.origin, code, claimedPersona: claimed }),
    });
  }

  /** An open session ended (a dead peer, a drop, a stop, GOODBYE): every session that opened leaves its end on the record. */
  closed(persona: string, why: string): void {
    this.fire("ending", { persona, op: "session.close", status: "SUCCESS", message: why });
  }

  /** An answer larger than the session's maxBody, replaced by FAILURE RESOURCE (PROTOCOL §4.5): RESPONSE_TOO_LARGE. */
  answerWithheld(
    persona: string,
    requestId: number,
    message: string,
    status: string,
    why: { code: string; errorClass: ErrorClass } = { code: "RESPONSE_TOO_LARGE", errorClass: "RESOURCE" },
  ): Promise<void> {
    return this.audit.append({
      session: this.session,
      persona,
      phase: "refused",
      op: "session.response",
      requestId,
      status: "FAILURE",
      errorClass: why.errorClass,
      message: `${why.code}: ${message} (it was ${status})`,
    });
  }

  /** `opened`/`ending`: the record opens or ends the session, and the live sessions' table follows it. */
  private fire(life: "opened" | "ending" | undefined, e: Omit<AuditEntry, "session" | "phase">): void {
    const entry: AuditEntry = { session: this.session, phase: "session", ...e };
    const live = this.live;
    void (life && live ? live[life](entry) : this.audit.append(entry)).catch(() => {});
  }
}
