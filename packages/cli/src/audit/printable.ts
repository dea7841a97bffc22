import { escapeUnprintable } from "@kpip/protocol";

/**
 * What a terminal shows as nothing, or as a line break, beyond the controls and bidi overrides
 * the protocol's labels refuse: format characters (zero-width space and joiners, the BOM, soft
 * hyphen, tag characters, invisible operators), every default-ignorable code point (variation
 * selectors, fillers) and the line and paragraph separators U+2028/U+2029. In a name someone
 * chose they could hide text, make two different names look alike, or break a line of a view.
 */
const INVISIBLE = /[\p{Cf}\p{Zl}\p{Zp}\p{Default_Ignorable_Code_Point}]/gu;
const escaped = (c: string) => `\\u{${(c.codePointAt(0) as number).toString(16)}}`;

/**
 * Text from the record as an operator's terminal should show it: a control character (C0, DEL,
 * C1), a bidirectional formatting character or an invisible one ({@link INVISIBLE}) becomes a
 * visible `\u{…}` escape. The record holds
 * text persona runtimes chose (messages, targets, host names from older kernels); printed raw, a
 * newline could forge a line of the view, an escape sequence could hide text or drive the terminal.
 * `keep`: characters shown as they are (none by default).
 */
export function printable(text: string, keep = ""): string {
  return escapeUnprintable(text, keep).replace(INVISIBLE, (c) => (keep.includes(c) ? c : escaped(c)));
}

/**
 * A program's output as an operator's terminal should show it: lines and tabs kept, every other
 * control or bidirectional formatting character a visible `\u{…}` escape (an agent's output must
 * not drive the terminal that reads it, e.g. retitle it, hide text or clear the screen).
 */
export function terminalText(bytes: Uint8Array): string {
  return printable(Buffer.from(bytes).toString(), "\n\t");
}
