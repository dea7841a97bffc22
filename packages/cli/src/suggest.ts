import { UsageError } from "./util.js";

/** Edit distance (insertions, deletions, substitutions, adjacent swaps) between two short words. */
export function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) (d[0] as number[])[j] = j;
  for (let i = 1; i <= a.length; i++) {
    const row = d[i] as number[];
    const prev = d[i - 1] as number[];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min((prev[j] as number) + 1, (row[j - 1] as number) + 1, (prev[j - 1] as number) + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1])
        v = Math.min(v, ((d[i - 2] as number[])[j - 2] as number) + 1);
      row[j] = v;
    }
  }
  return (d[a.length] as number[])[b.length] as number;
}

/** The known names closest to `word` (a typo, a plural for a singular), best first; none if nothing is close. */
export function nearest(word: string, known: readonly string[], max = 3): string[] {
  const limit = Math.max(1, Math.floor(word.length / 3));
  return known
    .map((k) => ({ k, d: editDistance(word.toLowerCase(), k.toLowerCase()) }))
    .filter((x) => x.d <= limit || x.k.startsWith(word) || word.startsWith(x.k))
    .sort((x, y) => x.d - y.d || x.k.localeCompare(y.k))
    .slice(0, max)
    .map((x) => x.k);
}

/** " — did you mean X?" for a usage message, or "" when nothing is close. */
export function didYouMean(word: string, known: readonly string[]): string {
  const n = nearest(word, known);
  return n.length ? ` — did you mean ${n.map((x) => JSON.stringify(x)).join(" or ")}?` : "";
}

/** Words people type for our subcommands (kubectl/docker habits). */
const ALIASES: Record<string, string> = {
  rm: "remove",
  ls: "list",
  del: "remove",
  delete: "remove",
  new: "create",
  show: "status",
};

/** The usage error for a missing or unknown subcommand of `group`, naming the nearest one. */
export function subcommandError(group: string, sub: string | undefined, known: readonly string[]): UsageError {
  if (sub === undefined) return new UsageError(`missing ${group} command: ${known.join(", ")}`);
  const alias = Object.hasOwn(ALIASES, sub) ? ALIASES[sub] : undefined;
  const hint = alias && known.includes(alias) ? ` — did you mean ${JSON.stringify(alias)}?` : didYouMean(sub, known);
  return new UsageError(`unknown ${group} command ${JSON.stringify(sub)}${hint} (${group} commands: ${known.join(", ")})`);
}
