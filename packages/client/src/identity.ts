import { type Identity, IdentityError, parseIdentity } from "@kpip/protocol";
import { readRegularFile, UnreadableFileError } from "@kpip/protocol/regular-file";

/** Larger than any identity file (about 250 bytes): a bound, not a format. */
const IDENTITY_FILE_MAX_BYTES = 64 * 1024;

/**
 * Reads a persona identity file (JSON, see @kpip/protocol `Identity`). Only a regular file of a
 * bounded size: one handed over may be a FIFO (which would block for ever) or /dev/zero.
 * @throws IdentityError when the file cannot be read or is not an identity.
 */
export function loadIdentity(path: string): Identity {
  let text: string;
  try {
    text = readRegularFile(path, IDENTITY_FILE_MAX_BYTES).toString("utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new IdentityError(
      code === "ENOENT"
        ? `identity file ${path} not found`
        : e instanceof UnreadableFileError
          ? `identity file ${e.message}`
          : `cannot read identity file ${path}: ${(e as Error).message}`,
    );
  }
  return parseIdentity(text);
}
