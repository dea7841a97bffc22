import { accessSync, constants } from "node:fs";
import { delimiter, join } from "node:path";

/** The first executable file `name` in the directories of `path` (a PATH-style list), or undefined. */
export function findProgram(name: string, path: string): string | undefined {
  for (const d of path.split(delimiter)) {
    if (!d) continue;
    const p = join(d, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return undefined;
}
