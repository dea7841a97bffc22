import { escapeUnprintable } from "@kpip/protocol";

/**
 * Text from the record as an operator's terminal should show it: a control character (C0, DEL,
 * C1) or a bidirectional formatting character becomes a visible `\u{…}` escape. The record holds
 * text persona runtimes chose (messages, targets, host names from older kernels); printed raw, a
 * newline could forge a line of the view, an escape sequence could hide text or drive the terminal.
 * `keep`: characters shown as they are (none by default).
 */
export function printable(text: string, keep = ""): string {
  return escapeUnprintable(text, keep);
}

/**
 * A program's output as an operator's terminal should show it: lines and tabs kept, every other
 * control or bidirectional formatting character a visible `\u{…}` escape (an agent's output must
 * not drive the terminal that reads it, e.g. retitle it, hide text or clear the screen).
 */
export function terminalText(bytes: Uint8Array): string {
  return printable(Buffer.from(bytes).toString(), "\n\t");
}
