import { replaceUnprintable } from "@kpip/protocol";

/**
 * Text from the record as an operator's terminal should show it: a control character (C0, DEL,
 * C1) or a bidirectional formatting character becomes a visible `\u{…}` escape. The record holds
 * text persona runtimes chose (messages, targets, host names from older kernels); printed raw, a
 * newline could forge a line of the view, an escape sequence could hide text or drive the terminal.
 */
export function printable(text: string): string {
  return replaceUnprintable(text, (c) => `\\u{${(c.codePointAt(0) as number).toString(16)}}`);
}
