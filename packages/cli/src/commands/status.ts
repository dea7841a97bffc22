import type { KernelClient } from "@kpip/client";
import { systemStatus } from "@kpip/protocol";
import { printable } from "../audit/printable.js";
import type { Command } from "../command.js";
import { CONNECT_OPTIONS, connectFromFlags } from "../connect.js";
import { EXIT, isoTime, reportError, toJson } from "../util.js";

const dur = (ms: number) =>
  ms < 60_000 ? `${Math.round(ms / 1000)}s` : ms < 3_600_000 ? `${Math.round(ms / 60_000)}m` : `${(ms / 3_600_000).toFixed(1)}h`;

/** The kernel's answer, shown and never obeyed by the terminal: each line escaped whole, so no value adds a line. */
const shown = (lines: readonly string[]) => `${lines.map((l) => printable(l)).join("\n")}\n`;

export const statusCommand: Command = {
  name: "status",
  summary: "what the kernel is doing: sessions, ops, agents, audit head",
  usage: "kpip status [--home DIR] [--json]",
  example: "kpip status --json",
  options: { ...CONNECT_OPTIONS, json: { type: "boolean", description: "print JSON" } },
  async run(v) {
    let client: KernelClient | undefined;
    try {
      client = await connectFromFlags(v);
      const s = (await client.op(systemStatus, "kernel://", {})).payload;
      if (v.json) {
        process.stdout.write(`${JSON.stringify(toJson(s))}\n`);
        return EXIT.OK;
      }
      // This command's own session is among them: say which, rather than count it silently.
      const mine = client.sessionId;
      const sessions = [
        `sessions   ${s.sessions.length}${s.sessions.some((x) => x.id === mine) ? " (one is this kpip status)" : ""}`,
        ...s.sessions.map(
          (x) =>
            `  ${x.persona.padEnd(24)} ${x.transport.padEnd(6)} ${x.state.padEnd(8)} age ${dur(x.ageMs).padEnd(6)} in flight ${x.inFlight}${x.pid !== undefined ? `  pid ${x.pid}` : ""}${x.id === mine ? "  (this command)" : ""}`,
        ),
      ];
      const head = `kernel     ${s.kernel}  (version ${s.version}, up ${dur(s.uptimeMs)})`;
      if (s.view === "persona") {
        // Not the operator: the kernel shows this persona only its own sessions.
        process.stdout.write(shown([head, `persona    ${s.persona} (own view)`, ...sessions]));
        return EXIT.OK;
      }
      const lines = [
        head,
        `home       ${s.home}`,
        ...(s.transports ?? []).map((t) => `listening  ${t.kind} ${t.address}`),
        `ops        ${s.ops?.running} running, ${s.ops?.queued} queued`,
        `agents     ${s.agents?.running} running`,
        `sandbox    ${!s.sandbox ? "unknown" : s.sandbox.mode === "none" ? "NONE: agents and commands run unconfined (--sandbox none)" : s.sandbox.usable ? `bubblewrap${s.sandbox.weakened ? ` (WEAKENED: ${s.sandbox.weakened})` : ""}` : `UNAVAILABLE: agents and commands are refused (${s.sandbox.reason ?? "?"})`}`,
        `audit      head ${s.audit?.head}${s.audit?.checkpoint ? `, last checkpoint ${s.audit.checkpoint.seq} at ${isoTime(s.audit.checkpoint.time)}` : ", no checkpoint yet"}`,
        ...(s.audit?.anchors ? [`anchors    ${s.audit.anchors}`] : []),
        ...(s.metrics ? [`metrics    ${s.metrics}`] : []),
        `events     ${s.events?.subscriptions} subscriptions, ${s.events?.dropped} dropped`,
        ...sessions,
      ];
      process.stdout.write(shown(lines));
      return EXIT.OK;
    } catch (e) {
      return reportError(e, v.json === true);
    } finally {
      await client?.close().catch(() => {});
    }
  },
};
