import asyncio
import types
import unittest

from kpip.subscription import EARLY_EVENTS, Subscription, Subscriptions


async def _noop(_s: Subscription) -> None:
    return None


class EarlyEventsTest(unittest.IsolatedAsyncioTestCase):
    async def test_full_hold_drops_its_oldest_with_subscribes_overlapping(self) -> None:
        """Late events of an id just unsubscribed do not push out a new subscription's first events (as the TypeScript client)."""
        subs = Subscriptions(types.SimpleNamespace(connections=1))  # type: ignore[arg-type]
        # Two subscribes under way: the hold is cleared only once neither is.
        subs._opening = 2
        for seq in range(1, EARLY_EVENTS + 1):
            subs.deliver({"subscription": 7, "topic": "topic://old/x", "seq": seq, "data": seq}, 10)
        for seq in range(1, 4):
            subs.deliver({"subscription": 9, "topic": "topic://b/x", "seq": seq, "data": seq}, 10)
        # The second subscribe's answer names id 9.
        sub = Subscription("topic://b/**", 1000, _noop)
        sub.remote_id = 9
        subs._subs.add(sub)
        subs._deliver_early(9)
        got = [(await asyncio.wait_for(sub._queue.get(), 5)).seq for _ in range(3)]
        self.assertEqual(got, [1, 2, 3], "the new subscription's first events were held, not dropped")
        self.assertTrue(sub._queue.empty())
        self.assertLessEqual(len(subs._early), EARLY_EVENTS)


if __name__ == "__main__":
    unittest.main()
