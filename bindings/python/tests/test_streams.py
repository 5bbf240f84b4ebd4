"""Async iterators shipped in the wheel (waypost/streams.py): per-subscription
delivery, and cancellation that ends the core and the wire subscription."""

import asyncio
import gc
import time

import waypost
from conftest import OwnServer, wait_for
from helpers import Platform, Recorder, Tokens, route, run


def _location(lat, ts_ms):
    return waypost.Location(ts_ms=ts_ms, lat=lat, lon=13.405, accuracy_m=5.0, speed_mps=4.0)


class _World:
    """A buyer tracking two drivers that upload on demand."""

    def __init__(self, server, unique, tmp_path):
        self.server = server
        self.d1, self.d2 = unique("d"), unique("d")
        buyer_id = unique("b")
        self.buyer = run(waypost.BuyerClient.open(
            waypost.BuyerConfig(base_url=server.url, user_id=buyer_id),
            Recorder(),
            Tokens(server.token(buyer_id, "buyer", [f"tracking:{self.d1}", f"tracking:{self.d2}"])),
            None,
        ))
        self.drivers = {
            d: run(waypost.Driver.open(
                waypost.DriverConfig(base_url=server.url, driver_id=d, device_id="py-s", buffer_path=str(tmp_path / f"{d}.db")),
                Tokens(server.token(d, "driver")),
                None,
                Platform(),
            ))
            for d in (self.d1, self.d2)
        }
        self.ts = int(time.time() * 1000) - 600_000

    def move(self, driver_id, lat):
        self.ts += 30_000
        driver = self.drivers[driver_id]
        assert run(driver.record(_location(lat, self.ts))).is_recorded()
        assert run(driver.upload_now()).pending == 0

    def subscribers(self, driver_id):
        return self.server.get_json(f"/v1/admin/channels/tracking:{driver_id}")["subscribers"]

    def close(self):
        for d in self.drivers.values():
            run(d.shutdown())
        run(self.buyer.shutdown())


def test_async_for_yields_only_its_driver_and_break_ends_the_subscription(server, unique, tmp_path):
    w = _World(server, unique, tmp_path)
    try:
        async def first_two(driver_id):
            seen = []
            async for update in w.buyer.track_driver_updates(driver_id):
                seen.append(update)
                if len(seen) == 2:
                    break
            return seen

        task = asyncio.run_coroutine_threadsafe(first_two(w.d1), _loop())
        wait_for("subscribed", lambda: w.subscribers(w.d1) == 1 and w.buyer.subscription_count() == 1)
        w.move(w.d2, 50.0)  # another driver: not for this iterator
        w.move(w.d1, 48.100)
        # Conflated: wait until the first fix was taken before sending the second.
        wait_for("first fix seen", lambda: w.buyer.latest_location(w.d1) is not None)
        time.sleep(0.2)
        w.move(w.d1, 48.101)
        seen = task.result(15)
        assert [u.driver_id for u in seen] == [w.d1, w.d1]
        assert abs(seen[-1].lat - 48.101) < 1e-9
        gc.collect()
        wait_for("break ended the core subscription", lambda: w.buyer.subscription_count() == 0)
        wait_for("and the wire subscription", lambda: w.subscribers(w.d1) == 0)
    finally:
        w.close()


def test_cancelling_the_consuming_task_ends_the_subscription(server, unique, tmp_path):
    w = _World(server, unique, tmp_path)
    try:
        got = []

        async def consume():
            async for update in w.buyer.track_driver_updates(w.d1):
                got.append(update)

        task = asyncio.run_coroutine_threadsafe(consume(), _loop())
        wait_for("subscribed", lambda: w.subscribers(w.d1) == 1)
        w.move(w.d1, 47.100)
        wait_for("an update", lambda: got)
        task.cancel()
        wait_for("the core subscription ended", lambda: w.buyer.subscription_count() == 0)
        wait_for("the wire subscription ended", lambda: w.subscribers(w.d1) == 0)
        n = len(got)
        w.move(w.d1, 47.101)
        time.sleep(0.5)
        assert len(got) == n, "no updates after cancel"
    finally:
        w.close()


def test_chat_messages_and_connection_states(server, unique):
    room, other = unique("room"), unique("room")
    buyer_id, vendor_id = unique("b"), unique("v")
    chans = [f"chat:{room}", f"chat:{other}"]
    buyer = run(waypost.BuyerClient.open(
        waypost.BuyerConfig(base_url=server.url, user_id=buyer_id), Recorder(),
        Tokens(server.token(buyer_id, "buyer", chans)), None))
    vendor = run(waypost.BuyerClient.open(
        waypost.BuyerConfig(base_url=server.url, user_id=vendor_id), Recorder(),
        Tokens(server.token(vendor_id, "buyer", chans)), None))
    try:
        async def until_connected():
            async with buyer.connection_states() as states:
                async for state in states:
                    if state.is_connected():
                        return state

        assert run(asyncio.wait_for(until_connected(), 10)).is_connected()

        async def first_message():
            async for entry in buyer.chat_messages(room):
                return entry

        task = asyncio.run_coroutine_threadsafe(first_message(), _loop())
        wait_for("joined", lambda: buyer.subscription_count() == 1)
        run(vendor.send_message(other, "not for this room"))
        run(vendor.send_message(room, "ciao"))
        entry = task.result(15)
        assert (entry.room, entry.body, entry.sender) == (room, "ciao", vendor_id)

        async def first_read_receipt():
            async for update in vendor.chat_receipts(room):
                if update.read and update.user == buyer_id:
                    return update

        keep = buyer.join_chat(room)  # the buyer stays in the room
        receipt = asyncio.run_coroutine_threadsafe(first_read_receipt(), _loop())
        wait_for("the vendor joined", lambda: vendor.subscription_count() == 1)
        run(buyer.mark_read(room, entry.seq))
        update = receipt.result(15)
        assert (update.room, update.seq) == (room, entry.seq)
        keep.cancel()
    finally:
        run(buyer.shutdown())
        run(vendor.shutdown())


def test_driver_updates_yield_the_dead_zone_trail_before_the_position(server, unique, tmp_path):
    """The per-subscription stream carries what the client-wide listener
    does: a buffered segment uploaded at once is one trail, then the newest
    position."""
    driver_id, buyer_id = unique("d"), unique("b")
    buyer = run(waypost.BuyerClient.open(
        waypost.BuyerConfig(base_url=server.url, user_id=buyer_id), Recorder(),
        Tokens(server.token(buyer_id, "buyer", [f"tracking:{driver_id}"])), None))
    driver = run(waypost.Driver.open(
        waypost.DriverConfig(base_url=server.url, driver_id=driver_id, device_id="py-su", buffer_path=str(tmp_path / "d.db")),
        Tokens(server.token(driver_id, "driver")), None, Platform()))
    try:
        got = []

        async def until_location():
            async for item in buyer.driver_updates(driver_id):
                got.append(item)
                if isinstance(item, waypost.LocationUpdate):
                    return

        task = asyncio.run_coroutine_threadsafe(until_location(), _loop())
        wait_for("subscribed", lambda: server.get_json(f"/v1/admin/channels/tracking:{driver_id}")["subscribers"] == 1)
        fixes = route(10, lat0=48.85)
        for loc in fixes:
            assert run(driver.record(loc)).is_recorded()
        run(driver.upload_now())
        task.result(15)
        assert [type(i).__name__ for i in got] == ["TrailUpdate", "LocationUpdate"], got
        assert [f.ts_ms for f in got[0].fixes] == [f.ts_ms for f in fixes[:-1]]
        assert got[1].ts_ms == fixes[-1].ts_ms
        wait_for("the subscription ended", lambda: buyer.subscription_count() == 0)
    finally:
        run(driver.shutdown())
        run(buyer.shutdown())


def test_driver_updates_yield_dark_and_online_status_then_the_trail(unique, tmp_path):
    """A courier goes dark (no network, still recording) for longer than the
    server's online TTL: the stream yields its position, `offline`, and when
    it is back `online` (how long it was dark), the missed segment as one
    trail and the newest position, in that order. On a server of the test's
    own with a 2 s TTL, so `offline` comes within ~2.5 s."""
    with OwnServer("--online-ttl", "2s") as server:
        driver_id, buyer_id = unique("d"), unique("b")
        buyer = run(waypost.BuyerClient.open(
            waypost.BuyerConfig(base_url=server.url, user_id=buyer_id), Recorder(),
            Tokens(server.token(buyer_id, "buyer", [f"tracking:{driver_id}"])), None))
        platform = Platform()
        driver = run(waypost.Driver.open(
            waypost.DriverConfig(base_url=server.url, driver_id=driver_id, device_id="py-dz", buffer_path=str(tmp_path / "d.db")),
            Tokens(server.token(driver_id, "driver")), None, platform))
        try:
            base = int(time.time() * 1000) - 120_000
            fixes = [
                waypost.Location(ts_ms=base + i * 6_000, lat=48.85 + i * 0.001, lon=2.35, accuracy_m=8.0, speed_mps=18.0)
                for i in range(7)
            ]
            got = []

            async def until_newest():
                async for item in buyer.driver_updates(driver_id):
                    got.append(item)
                    if isinstance(item, waypost.LocationUpdate) and item.ts_ms == fixes[-1].ts_ms:
                        return

            task = asyncio.run_coroutine_threadsafe(until_newest(), _loop())
            wait_for("subscribed", lambda: server.get_json(f"/v1/admin/channels/tracking:{driver_id}")["subscribers"] == 1)
            assert run(driver.record(fixes[0])).is_recorded()
            assert run(driver.upload_now()).pending == 0
            wait_for("the first position", lambda: len(got) == 1)

            # A garage: no network, the phone keeps recording.
            assert platform.set_network(waypost.NetworkType.OFFLINE)
            assert all(o.is_recorded() for o in run(driver.record_many(fixes[1:])))
            assert run(driver.upload_now()).pending == 6, "nothing leaves while offline"
            wait_for("watchers are told it went dark", lambda: any(
                isinstance(i, waypost.DriverStatusUpdate) and not i.online for i in got))

            # Out of the garage: the backlog goes up at once.
            assert platform.set_network(waypost.NetworkType.WIFI)
            assert run(driver.upload_now()).pending == 0
            task.result(15)

            def kind(i):
                if isinstance(i, waypost.DriverStatusUpdate):
                    return "online" if i.online else "offline"
                return "trail" if isinstance(i, waypost.TrailUpdate) else "location"

            assert [kind(i) for i in got] == ["location", "offline", "online", "trail", "location"], got
            offline, online = got[1], got[2]
            assert offline.driver_id == online.driver_id == driver_id
            assert offline.last_seen_ms == online.last_seen_ms > 0, (offline, online)
            assert online.dark_ms is not None and online.dark_ms >= 1_000, online
            trail = got[3]
            assert trail.driver_id == driver_id and trail.order_id is None
            assert [f.ts_ms for f in trail.fixes] == [f.ts_ms for f in fixes[1:-1]], trail
        finally:
            run(driver.shutdown())
            run(buyer.shutdown())


def test_chat_events_carry_edits_and_deletes_once_in_order(server, unique, tmp_path):
    """Edits and deletes reach a room's iterator as the changed entry
    (`edited` / `deleted`, empty body), once each, after the originals and
    in the order they were made."""
    room, buyer_id, vendor_id = unique("room"), unique("b"), unique("v")
    buyer = run(waypost.BuyerClient.open(
        waypost.BuyerConfig(base_url=server.url, user_id=buyer_id, db_path=str(tmp_path / "b.db")), Recorder(),
        Tokens(server.token(buyer_id, "buyer", [f"chat:{room}"])), None))
    vendor = run(waypost.BuyerClient.open(
        waypost.BuyerConfig(base_url=server.url, user_id=vendor_id, db_path=str(tmp_path / "v.db")), Recorder(),
        Tokens(server.token(vendor_id, "buyer", [f"chat:{room}"])), None))
    keep = vendor.join_chat(room)
    try:
        seen = []

        async def collect(n):
            async for entry in buyer.chat_messages(room):
                seen.append(entry)
                if len(seen) == n:
                    return

        task = asyncio.run_coroutine_threadsafe(collect(4), _loop())
        wait_for("both in the room", lambda: server.get_json(f"/v1/admin/channels/chat:{room}")["subscribers"] == 2)
        run(vendor.send_message(room, "one"))
        run(vendor.send_message(room, "two"))
        wait_for("both messages", lambda: len(seen) == 2)
        one, two = seen
        run(vendor.edit_message(room, two.seq, "two, fixed"))
        wait_for("the edit", lambda: len(seen) == 3)
        run(vendor.delete_message(room, one.seq))
        task.result(15)
        assert [(e.seq, e.body, e.edited, e.deleted) for e in seen] == [
            (one.seq, "one", False, False),
            (two.seq, "two", False, False),
            (two.seq, "two, fixed", True, False),
            (one.seq, "", False, True),
        ], seen
        assert [(m.seq, m.deleted) for m in run(buyer.messages(room, 10))] == [(one.seq, True), (two.seq, False)]
    finally:
        keep.cancel()
        run(buyer.shutdown())
        run(vendor.shutdown())


def test_health_updates_yield_the_current_report_then_changes(server, unique, tmp_path):
    driver_id = unique("d")
    platform = Platform()
    driver = run(waypost.Driver.open(
        waypost.DriverConfig(base_url=server.url, driver_id=driver_id, device_id="py-sh", buffer_path=str(tmp_path / "d.db")),
        Tokens(server.token(driver_id, "driver")), None, platform))
    driver.start()
    try:
        async def two_reports():
            seen = []
            async for health in driver.health_updates():
                seen.append([i.code for i in health.issues])
                if len(seen) == 1:
                    platform.set_permission(waypost.LocationPermission.DENIED)
                else:
                    return seen

        seen = run(asyncio.wait_for(two_reports(), 10))
        assert "permission_denied" not in seen[0], seen
        assert "permission_denied" in seen[1], seen
    finally:
        run(driver.shutdown())


def _loop():
    import helpers
    return helpers._LOOP
