import type { Attack } from "./attack.js";
import { eventBytes } from "./event-bytes.js";
import { expensiveTokens } from "./expensive-tokens.js";
import { fatalErrorLeak } from "./fatal-error-leak.js";
import { logFlood } from "./log-flood.js";
import { mintPairs } from "./mint-pairs.js";
import { oversizedResend } from "./oversized-resend.js";
import { preauthSlots } from "./preauth-slots.js";
import { rateRefresh } from "./rate-refresh.js";
import { refusalFlood } from "./refusal-flood.js";
import { shmShrink } from "./shm-shrink.js";
import { subscriptions } from "./subscriptions.js";
import { tokenRows } from "./token-rows.js";

/** The 12 attacks of issue #15, in the order of its findings. */
export const ATTACKS: Attack[] = [
  shmShrink,
  mintPairs,
  expensiveTokens,
  eventBytes,
  subscriptions,
  preauthSlots,
  fatalErrorLeak,
  refusalFlood,
  logFlood,
  tokenRows,
  rateRefresh,
  oversizedResend,
];
