// The run's own node:test reporter, beside the spec reporter: names the tests still running in a file
// that timed out (on stderr, as it happens) and ends the run with the slowest files (its output).
// One reporter for both: node composes each reporter onto the run's event stream with four `end`
// listeners, so a third reporter made 12, past the default 10, and every run printed a
// MaxListenersExceededWarning (nodejs/node#57605, node 20 to 22). Not a leak: the count is fixed per
// reporter; one reporter fewer keeps under the limit without raising it for every stream.
import { hangWatch } from "./hang-reporter.mjs";
import { timingWatch } from "./timing-reporter.mjs";

export default async function* runReporter(source) {
  const hang = hangWatch();
  const timing = timingWatch();
  for await (const ev of source) {
    const note = hang(ev);
    if (note) process.stderr.write(note);
    timing.event(ev);
  }
  yield timing.end();
}
