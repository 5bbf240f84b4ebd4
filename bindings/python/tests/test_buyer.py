"""Buyer flows (tracking, chat) through the Python bindings against a real server."""

import asyncio
import threading
import time

import waypost
from conftest import wait_for
from helpers import Platform, Recorder, Tokens, route, run


def test_buyer_receives_location_and_chat_on_sdk_threads(server, unique, tmp_path):
    driver_id, room = unique("d"), unique("order")
    buyer_id, vendor_id = unique("b"), unique("v")
    buyer_l, vendor_l = Recorder(), Recorder()
    buyer = run(waypost.BuyerClient.open(
        waypost.BuyerConfig(base_url=server.url, user_id=buyer_id, db_path=str(tmp_path / "buyer.db")),
        buyer_l,
        Tokens(server.token(buyer_id, "buyer", [f"tracking:{driver_id}", f"chat:{room}"])),
        Platform(),
    ))
    vendor = run(waypost.BuyerClient.open(
        waypost.BuyerConfig(base_url=server.url, user_id=vendor_id),
        vendor_l,
        waypost.static_token(server.token(vendor_id, "buyer", [f"chat:{room}"])),
        None,
    ))
    driver = run(waypost.Driver.open(
        waypost.DriverConfig(base_url=server.url, driver_id=driver_id, device_id="py-2", buffer_path=str(tmp_path / "d.db")),
        Tokens(server.token(driver_id, "driver")),
        None,
        Platform(),
    ))
    # Subscriptions end when dropped: keep them referenced.
    tracking = buyer.track_driver(driver_id)
    chats = [buyer.join_chat(room), vendor.join_chat(room)]
    try:
        wait_for("both connected", lambda: buyer.connection_state().is_connected() and vendor.connection_state().is_connected())

        assert run(driver.record(route(1, lat0=45.4642)[0])).is_recorded()
        run(driver.upload_now())
        wait_for("the buyer sees the courier", lambda: buyer_l.locations)
        update = buyer_l.locations[-1]
        assert update.driver_id == driver_id and abs(update.lat - 45.4642) < 1e-9
        assert buyer.latest_location(driver_id) == update

        pending = run(vendor.send_message(room, "Rider picked up your order"))
        assert pending.status == waypost.MessageStatus.PENDING and pending.seq is None
        wait_for("the buyer receives it", lambda: any(m.body == "Rider picked up your order" for m in buyer_l.messages))
        got = next(m for m in buyer_l.messages if m.body == "Rider picked up your order")
        assert got.status == waypost.MessageStatus.RECEIVED and got.sender == vendor_id and got.seq is not None

        run(buyer.send_message(room, "Grazie!"))
        wait_for("the vendor receives the reply", lambda: any(m.body == "Grazie!" for m in vendor_l.messages))
        wait_for("the reply is acknowledged", lambda: any(
            m.body == "Grazie!" and m.status == waypost.MessageStatus.SENT for m in buyer_l.outgoing + buyer_l.messages))
        assert [m.body for m in run(buyer.messages(room, 10))] == ["Rider picked up your order", "Grazie!"]

        main = threading.get_ident()
        assert buyer_l.threads and vendor_l.threads
        for ident, native in buyer_l.threads + vendor_l.threads:
            assert ident != main
            assert native == "waypost-rt"

        # Cancelling stops the updates for that driver.
        tracking.cancel()
        assert tracking.is_cancelled()
    finally:
        async def stop():
            await driver.shutdown()
            await buyer.shutdown()
            await vendor.shutdown()
        run(stop())
        del chats


def test_refused_token_closes_with_unauthorized(server):
    rec = Recorder()
    client = run(waypost.BuyerClient.open(waypost.BuyerConfig(base_url=server.url, user_id="b-bad"), rec, Tokens("not-a-jwt"), None))
    try:
        def closed_unauthorized():
            s = client.connection_state()
            return s.is_closed() and s.reason.is_unauthorized()
        wait_for("Closed(Unauthorized)", closed_unauthorized)
        assert any(s.is_closed() for s in rec.states)
    finally:
        run(client.shutdown())


class OrderEntries(waypost.OrderListener):
    def __init__(self):
        self.lock = threading.Lock()
        self.entries = []
        self.locations = []

    def on_entry(self, entry):
        with self.lock:
            self.entries.append(entry)

    def on_location(self, update):
        with self.lock:
            self.locations.append(update)

    def on_trail(self, trail):
        pass

    def on_driver_status(self, status):
        pass


def test_track_order_delivers_each_entry_once_in_order(server, unique):
    order_id, buyer_id = unique("o"), unique("b")
    statuses = ["placed", "accepted", "picked_up", "delivered"]
    status, _ = server.post_json(f"/v1/orders/{order_id}/events", {"event_id": "e0", "status": "placed"})
    assert status == 202
    listener = OrderEntries()
    client = run(waypost.BuyerClient.open(
        waypost.BuyerConfig(base_url=server.url, user_id=buyer_id),
        Recorder(),
        Tokens(server.token(buyer_id, "buyer", [f"order:{order_id}"])),
        None,
    ))
    sub = client.track_order(order_id, listener)
    try:
        wait_for("placed (replayed)", lambda: len(listener.entries) >= 1)
        for i, st in enumerate(statuses[1:], start=1):
            body = {"event_id": f"e{i}", "status": st}
            if st == "accepted":
                body["driver_id"] = unique("d")
            status, _ = server.post_json(f"/v1/orders/{order_id}/events", body)
            assert status == 202
        wait_for("delivered", lambda: any(e.status == "delivered" for e in listener.entries))
        assert [e.seq for e in listener.entries] == [1, 2, 3, 4]
        assert [e.status for e in listener.entries] == statuses
        assert all(e.kind == waypost.OrderEntryKind.STATUS and e.order_id == order_id for e in listener.entries)
        assert listener.entries[-1].active is False
        sub.cancel()
        assert sub.is_cancelled()
    finally:
        run(client.shutdown())


def test_buyer_sees_the_path_through_a_dead_zone(server, unique, tmp_path):
    """A courier's phone buffered 10 fixes spanning 54 s (a dead zone) and
    uploads them at once: the buyer gets the 9 it missed as one trail, in
    order, and then the newest as a location."""
    driver_id, buyer_id = unique("d"), unique("b")
    listener = Recorder()
    buyer = run(waypost.BuyerClient.open(
        waypost.BuyerConfig(base_url=server.url, user_id=buyer_id),
        listener,
        waypost.static_token(server.token(buyer_id, "buyer", [f"tracking:{driver_id}"])),
        None,
    ))
    driver = run(waypost.Driver.open(
        waypost.DriverConfig(base_url=server.url, driver_id=driver_id, device_id="py-dz", buffer_path=str(tmp_path / "d.db")),
        Tokens(server.token(driver_id, "driver")),
        None,
        Platform(),
    ))
    tracking = buyer.track_driver(driver_id)
    try:
        wait_for("connected", lambda: buyer.connection_state().is_connected())
        time.sleep(0.5)  # the subscription is in place
        fixes = route(10, lat0=48.85)
        for loc in fixes:
            assert run(driver.record(loc)).is_recorded()
        run(driver.upload_now())
        wait_for("the newest position", lambda: listener.locations)
        kinds = [k for k, _ in listener.path]
        assert kinds == ["trail", "location"], kinds
        trail = listener.trails[0]
        assert trail.driver_id == driver_id and trail.order_id is None
        assert [f.ts_ms for f in trail.fixes] == [f.ts_ms for f in fixes[:-1]]
        assert listener.locations[0].ts_ms == fixes[-1].ts_ms
        assert not listener.statuses, "a first appearance is no comeback"
    finally:
        async def stop():
            await driver.shutdown()
            await buyer.shutdown()
        run(stop())
        del tracking


def test_receipts_unread_and_edits(server, unique, tmp_path):
    room = unique("order")
    buyer_id, vendor_id = unique("b"), unique("v")
    buyer_l, vendor_l = Recorder(), Recorder()
    buyer = run(waypost.BuyerClient.open(
        waypost.BuyerConfig(base_url=server.url, user_id=buyer_id, db_path=str(tmp_path / "b.db")),
        buyer_l,
        waypost.static_token(server.token(buyer_id, "buyer", [f"chat:{room}"])),
        None,
    ))
    vendor = run(waypost.BuyerClient.open(
        waypost.BuyerConfig(base_url=server.url, user_id=vendor_id, db_path=str(tmp_path / "v.db")),
        vendor_l,
        waypost.static_token(server.token(vendor_id, "buyer", [f"chat:{room}"])),
        None,
    ))
    chats = [buyer.join_chat(room), vendor.join_chat(room)]
    try:
        wait_for("both connected", lambda: buyer.connection_state().is_connected() and vendor.connection_state().is_connected())
        run(vendor.send_message(room, "Your order is ready"))
        run(vendor.send_message(room, "Rider on the way"))
        wait_for("the buyer stores both", lambda: len(run(buyer.messages(room, 10))) == 2)
        assert run(buyer.unread_count(room)) == 2
        first = run(buyer.messages(room, 10))[0]

        run(buyer.mark_read(room, first.seq))
        assert run(buyer.unread_count(room)) == 1

        def vendor_sees(read):
            marks = [r for r in run(vendor.receipts(room)) if r.user == buyer_id]
            return marks and marks[0].read == read and marks[0].delivered >= read
        # The vendor's ticks: delivered (sent by the SDK) and read.
        wait_for("the vendor sees the read receipt", lambda: vendor_sees(first.seq))
        wait_for("the vendor's listener hears it (on_receipt)", lambda: any(
            r.room == room and r.user == buyer_id and r.read and r.seq == first.seq for r in vendor_l.receipts))

        mine = next(m for m in run(vendor.messages(room, 10)) if m.body == "Rider on the way")
        run(vendor.edit_message(room, mine.seq, "Rider arriving in 2 min"))
        wait_for("the buyer sees the edit", lambda: any(
            m.seq == mine.seq and m.edited and m.body == "Rider arriving in 2 min" for m in run(buyer.messages(room, 10))))
        run(vendor.delete_message(room, first.seq))
        wait_for("the buyer sees the delete", lambda: any(
            m.seq == first.seq and m.deleted and m.body == "" for m in run(buyer.messages(room, 10))))
        # Someone else's message cannot be edited: refused by the server.
        run(buyer.edit_message(room, mine.seq, "not mine"))
        wait_for("the refusal reaches the buyer", lambda: any(e[1] == "forbidden" for e in buyer_l.errors))
        assert [m.seq for m in run(buyer.messages(room, 10))] == [first.seq, mine.seq]

        # Attachment metadata travels with a message (the body may be empty).
        photo = waypost.Attachment(url="https://cdn.example/door.jpg", mime="image/jpeg", size=48213, width=1024, height=768)
        run(vendor.send_message_with_attachments(room, "", [photo]))
        wait_for("the buyer gets the photo", lambda: any(m.attachments == [photo] for m in run(buyer.messages(room, 10))))
    finally:
        async def stop():
            await buyer.shutdown()
            await vendor.shutdown()
        run(stop())
        del chats
