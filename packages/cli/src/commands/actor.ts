import { userInfo } from "node:os";

/** Who made an administrative change on the home (its uid and user name), for its audit record. */
export function actor(command: string): string {
  let user = process.env.USER ?? "";
  try {
    user = userInfo().username;
  } catch {
    // a uid without a passwd entry (containers): the uid alone
  }
  return `${command} (uid ${process.getuid?.() ?? "?"}${user ? ` ${user}` : ""})`;
}
