"""In-band token refresh through the Python bindings against a real server:
a token provider minting short-lived tokens (the server's development
secret, through `waypost token --dev`), and one that hands out a token of
another user."""

import asyncio
import threading
import time

import waypost
from conftest import wait_for
from helpers import Recorder, run

TTL_S = 6


class Minting(waypost.TokenProvider):
    """Mints a fresh `TTL_S` token on every call; `wrong_on` (a call
    number) gets a token of another user instead."""

    def __init__(self, server, sub, channels, wrong_on=None):
        self.server, self.sub, self.channels, self.wrong_on = server, sub, channels, wrong_on
        self.lock = threading.Lock()
        self.calls = 0

    async def _mint(self):
        with self.lock:
            self.calls += 1
            n = self.calls
        sub = "someone-else" if n == self.wrong_on else self.sub
        return await asyncio.to_thread(self.server.token, sub, "buyer", self.channels, f"{TTL_S}s")

    async def token(self):
        return await self._mint()

    async def refresh_token(self):
        return await self._mint()


def _count(states, pred):
    return sum(1 for s in list(states) if pred(s))


def test_sdk_refreshes_in_band_on_the_same_connection(server, unique):
    driver_id, buyer_id = unique("d"), unique("b")
    driver_token = server.token(driver_id, "driver")
    tokens = Minting(server, buyer_id, [f"tracking:{driver_id}"])
    rec = Recorder()
    client = run(waypost.BuyerClient.open(
        waypost.BuyerConfig(base_url=server.url, user_id=buyer_id), rec, tokens, None))
    tracking = client.track_driver(driver_id)
    try:
        wait_for("connected", lambda: client.connection_state().is_connected())
        # 15 s of fixes: the 6 s tokens are refreshed at ~3 s, ~6 s, ...
        seq, started = 0, time.monotonic()
        while time.monotonic() - started < 15:
            seq += 1
            server.post_fix(driver_id, driver_token, seq)
            time.sleep(0.2)
        wait_for("the last fix", lambda: rec.locations and rec.locations[-1].seq == seq)
        assert [u.seq for u in rec.locations] == list(range(1, seq + 1)), "a fix was lost"
        assert tokens.calls >= 3, f"{tokens.calls} tokens: fewer than two refreshes"
        # One connection all along: one Connecting, one Connected, nothing else.
        assert _count(rec.states, lambda s: s.is_connecting()) == 1, rec.states
        assert _count(rec.states, lambda s: s.is_connected()) == 1, rec.states
        assert len(rec.states) == 2, rec.states
        assert rec.errors == []
    finally:
        tracking.cancel()
        run(client.shutdown())


def test_refused_refresh_is_reported_and_reconnects_at_exp(server, unique):
    driver_id, buyer_id = unique("d"), unique("b")
    driver_token = server.token(driver_id, "driver")
    # Call 1 connects; call 2 (the first refresh) is another user's token.
    tokens = Minting(server, buyer_id, [f"tracking:{driver_id}"], wrong_on=2)
    rec = Recorder()
    client = run(waypost.BuyerClient.open(
        waypost.BuyerConfig(base_url=server.url, user_id=buyer_id), rec, tokens, None))
    tracking = client.track_driver(driver_id)
    try:
        wait_for("the refusal reaches the app",
                 lambda: any(r == "token" and c == "forbidden" for r, c, _ in list(rec.errors)), timeout=15)
        # The old token ends at its exp (4001); the SDK reconnects with a
        # fresh token from the provider, without the app doing anything.
        wait_for("a second connection", lambda: _count(rec.states, lambda s: s.is_connected()) == 2, timeout=15)
        assert not any(s.is_closed() for s in list(rec.states)), rec.states
        assert tokens.calls >= 3
        server.post_fix(driver_id, driver_token, 1)
        wait_for("a fix on the new connection", lambda: rec.locations and rec.locations[-1].seq == 1)
    finally:
        tracking.cancel()
        run(client.shutdown())
