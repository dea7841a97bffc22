import { readFileSync } from "node:fs";
import { type Identity, IdentityError, parseIdentity } from "@kpip/protocol";

/**
 * Reads a persona identity file (JSON, see @kpip/protocol `Identity`).
 * @throws IdentityError when the file cannot be read or is not an identity.
 */
export function loadIdentity(path: string): Identity {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new IdentityError(
      code === "ENOENT" ? `identity file ${path} not found` : `cannot read identity file ${path}: ${(e as Error).message}`,
    );
  }
  return parseIdentity(text);
}
