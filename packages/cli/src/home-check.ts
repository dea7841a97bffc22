import { lstatSync } from "node:fs";
import { secureHome, UnsafeHomeError } from "@kpip/kernel";
import { printable } from "./audit/printable.js";
import { UsageError } from "./util.js";

/**
 * Checks a home a command writes in (the registry offline, identity files under `personas/`,
 * the root keys) as the kernel checks it at start: a real directory of this user's, no link in
 * it, nothing of another user's. `kpip persona create --home ~alice/.kpip` run by root (helping
 * alice) otherwise wrote through links alice planted there — the offline journal's stamp appended
 * to a file of root's, an identity file put in a directory of root's — where the kernel, refusing
 * such a home, would never write. A home that is not there is left to the command to report.
 */
export function checkHomeToWrite(home: string): void {
  if (!lstatSync(home, { throwIfNoEntry: false })) return;
  try {
    secureHome(home);
  } catch (e) {
    if (e instanceof UnsafeHomeError) throw new UsageError(printable(e.message));
    throw e;
  }
}
