/**
 * A key given twice in one JSON object, or undefined. `JSON.parse` keeps the last one silently:
 * for a settings file that is a setting that does not say what a reader of the file sees first.
 * `text` must already be valid JSON (parse it first); keys are compared decoded (`"\u0061"` is `"a"`).
 */
export function repeatedJsonKey(text: string): string | undefined {
  // One entry per open container: the keys of an object so far (null for an array).
  const open: (Set<string> | null)[] = [];
  // Whether the next string in the innermost object is a key.
  let keyNext = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "{") {
      open.push(new Set());
      keyNext = true;
    } else if (c === "[") {
      open.push(null);
      keyNext = false;
    } else if (c === "}" || c === "]") {
      open.pop();
      keyNext = false;
    } else if (c === ",") keyNext = open[open.length - 1] != null;
    else if (c === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      if (keyNext) {
        const keys = open[open.length - 1] as Set<string>;
        const key = JSON.parse(text.slice(i, j + 1)) as string;
        if (keys.has(key)) return key;
        keys.add(key);
        keyNext = false;
      }
      i = j;
    }
  }
  return undefined;
}
