import { decodeToken, effectiveGrant, type Token, tokenBind, tokenRefresh } from "@kpip/protocol";
import { kernelBytes, kernelNumber } from "./answer-fields.js";
import { TokenRefreshError } from "./errors.js";
import { opCall } from "./op-call.js";
import type { CallFn } from "./options.js";

interface HeldToken {
  bytes: Uint8Array;
  token: Token;
  /** Its handle on the current session (0 = not bound). */
  handle: number;
  timer?: NodeJS.Timeout;
  /** Refreshes in a row that gave a token already due for refresh, or due again within {@link floor}. */
  futile: number;
  /**
   * A refresh that leaves the token due again sooner than this (ms) is futile: the smaller of
   * {@link FUTILE_DELAY_MS} and half the time from `nbf` to due of the token the client was given
   * (not the kernel's, which chooses the lifetimes of the tokens it gives: an honest one keeps
   * the lifetime, so a short-lived token's own cadence is futile only if a round trip takes half of it).
   */
  floor: number;
}

/**
 * A refresh that gives a token already due for refresh (at or past its expiry, or due again
 * within {@link HeldToken.floor}: a broken or hostile kernel) is tried again after that floor
 * (1 s, less only for a token given with under 4 s of life), then twice it, and reported after
 * the third in a row: without a floor the refresher would ask again at once, without end — or,
 * for a token due again 200 ms after each refresh, five times a second.
 */
const FUTILE_DELAY_MS = 1000;
const MAX_FUTILE = 3;

/** Where the refresher reports (the client's events). */
export interface RefreshEvents {
  refreshed(info: { id: string; exp: number }): void;
  failed(err: TokenRefreshError): void;
}

/**
 * The tokens a client holds: bound at every attestation, and each refreshed (token.refresh,
 * then token.bind on the session) `marginMs` before it expires, at most halfway through its
 * lifetime. A failed refresh is reported at once and on the client's next call.
 */
export class TokenRefresher {
  private readonly held: HeldToken[];
  private failure: Error | undefined;
  private stopped = false;
  /** The bound handles, built again only when one changes (every call reads them). */
  private handleList: readonly number[] | undefined;

  constructor(
    tokens: { bytes: Uint8Array; token: Token }[],
    private readonly marginMs: number,
    private readonly call: CallFn,
    private readonly events: RefreshEvents,
  ) {
    this.held = tokens.map((t) => ({ ...t, handle: 0, futile: 0, floor: this.floorOf(t.token) }));
  }

  /** The tokens' wire bytes, to present at ATTEST. */
  get bytes(): Uint8Array[] {
    return this.held.map((h) => h.bytes);
  }

  /** Handles of the bound tokens (unbound ones left out). */
  get handles(): readonly number[] {
    if (this.handleList === undefined) {
      this.handleList = Object.freeze(this.held.map((h) => h.handle).filter((h) => h > 0));
    }
    return this.handleList;
  }

  /** The tokens currently held, as base64url text. */
  get text(): string[] {
    return this.held.map((h) => Buffer.from(h.bytes).toString("base64url"));
  }

  /** WELCOME's handles, in the order the tokens were presented (0 = refused). */
  bound(handles: number[]): void {
    this.held.forEach((h, i) => {
      h.handle = handles[i] ?? 0;
    });
    this.handleList = undefined;
  }

  /** The last refresh failure, once: the next call fails with it. */
  takeFailure(): Error | undefined {
    const e = this.failure;
    this.failure = undefined;
    return e;
  }

  start(): void {
    for (const h of this.held) this.schedule(h);
  }

  stop(): void {
    this.stopped = true;
    for (const h of this.held) clearTimeout(h.timer);
  }

  /** Milliseconds until `h` is due for refresh (0 when it is already); undefined when it cannot be extended. */
  private dueIn(h: HeldToken): number | undefined {
    const g = effectiveGrant(h.token);
    if (g.exp >= g.maxExp) return undefined;
    const margin = Math.min(this.marginMs, (g.exp - g.nbf) / 2);
    return Math.max(0, g.exp - margin - Date.now());
  }

  /** {@link HeldToken.floor} for a token the client was given. */
  private floorOf(token: Token): number {
    const g = effectiveGrant(token);
    const life = g.exp - g.nbf;
    return Math.max(0, Math.min(FUTILE_DELAY_MS, (life - Math.min(this.marginMs, life / 2)) / 2));
  }

  private schedule(h: HeldToken): void {
    clearTimeout(h.timer);
    if (this.stopped) return;
    let at = this.dueIn(h);
    if (at === undefined) return;
    if (h.futile > 0) at = Math.max(at, h.floor * 2 ** (h.futile - 1));
    h.timer = setTimeout(() => void this.refresh(h), Math.min(at, 2 ** 31 - 1));
    h.timer.unref();
  }

  /** Refreshes one held token now: token.refresh, then binds the fresh token on this session. */
  private async refresh(h: HeldToken): Promise<void> {
    try {
      const op = opCall(this.call);
      const r = await op(tokenRefresh, `token://${h.token.claims.id}`, { token: h.bytes }, { caps: [h.bytes] });
      const fresh = kernelBytes(r.payload?.token, "token.refresh's token");
      const token = decodeToken(fresh);
      const b = await op(tokenBind, `token://${token.claims.id}`, { token: fresh }, { caps: [fresh] });
      h.bytes = fresh;
      h.token = token;
      h.handle = kernelNumber(b.payload?.handle, "token.bind's handle");
      this.handleList = undefined;
      this.events.refreshed({ id: token.claims.id, exp: effectiveGrant(token).exp });
      const due = this.dueIn(h);
      h.futile = due !== undefined && (due === 0 || due < h.floor) ? h.futile + 1 : 0;
      if (h.futile >= MAX_FUTILE) {
        h.futile = 0;
        const err = new TokenRefreshError(
          `could not refresh token ${token.claims.id}: token.refresh gave a token already due for refresh (at or past its expiry, or due again within ${Math.round(h.floor)} ms) ${MAX_FUTILE} times in a row`,
        );
        this.failure = err;
        this.events.failed(err);
        return;
      }
      this.schedule(h);
    } catch (e) {
      const err = new TokenRefreshError(`could not refresh token ${h.token.claims.id}: ${(e as Error).message}`, { cause: e });
      this.failure = err;
      this.events.failed(err);
    }
  }
}
