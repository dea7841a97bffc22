import type { LiveSession, LiveSessionStore } from "../types.js";
import type { Row, StoreBase, WithRows } from "./base.js";

/** Sessions open or closing, for the next start after a kill (audit/live-sessions.ts). */
export function SessionRows<B extends StoreBase>(Base: B): WithRows<B, LiveSessionStore> {
  return class SessionRows extends Base implements LiveSessionStore {
    liveSessionOpened(s: Omit<LiveSession, "closeSeq">): void {
      this.prep("INSERT OR REPLACE INTO live_sessions (session, persona, caps, open_seq) VALUES (?, ?, ?, ?)").run(
        s.session,
        s.persona,
        s.caps,
        s.openSeq,
      );
    }
    liveSessionsEnding(ends: readonly { session: string; closeSeq: number }[]): void {
      const note = this.prep("UPDATE live_sessions SET close_seq = ? WHERE session = ?");
      if (ends.length === 1) note.run((ends[0] as { closeSeq: number }).closeSeq, (ends[0] as { session: string }).session);
      else
        this.transaction(() => {
          for (const e of ends) note.run(e.closeSeq, e.session);
        });
    }
    liveSessionsAfter(seq: number): void {
      this.transaction(() => {
        this.prep("DELETE FROM live_sessions WHERE open_seq > ?").run(seq);
        this.prep("UPDATE live_sessions SET close_seq = NULL WHERE close_seq > ?").run(seq);
      });
    }
    liveSessionsEnded(sessions: readonly string[]): void {
      if (sessions.length === 0) return;
      const drop = this.prep("DELETE FROM live_sessions WHERE session = ?");
      if (sessions.length === 1) drop.run(sessions[0]);
      else
        this.transaction(() => {
          for (const s of sessions) drop.run(s);
        });
    }
    liveSessions(): LiveSession[] {
      return (
        this.prep("SELECT session, persona, caps, open_seq, close_seq FROM live_sessions ORDER BY open_seq").all() as Row[]
      ).map((r) => ({
        session: r.session as string,
        persona: r.persona as string,
        caps: (r.caps as string | null) ?? null,
        openSeq: r.open_seq as number,
        closeSeq: (r.close_seq as number | null) ?? null,
      }));
    }
  };
}
