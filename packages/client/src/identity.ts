import { readFileSync } from "node:fs";
import { type Identity, parseIdentity } from "@kpip/protocol";

/** Reads a persona identity file (JSON, see @kpip/protocol `Identity`). */
export function loadIdentity(path: string): Identity {
  return parseIdentity(readFileSync(path, "utf8"));
}
