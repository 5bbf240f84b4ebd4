"""Push registration and handle_push through the Python bindings against a
real server (no push provider needed: the test builds the payload a push
would carry)."""

import json

import pytest
import waypost
from conftest import wait_for
from helpers import Recorder, Tokens, run


def test_register_push_token_and_handle_push_sync_the_gap(server, unique, tmp_path):
    room, buyer_id, vendor_id = unique("order"), unique("b"), unique("v")
    buyer = run(waypost.BuyerClient.open(
        waypost.BuyerConfig(base_url=server.url, user_id=buyer_id, db_path=str(tmp_path / "b.db")),
        Recorder(),
        Tokens(server.token(buyer_id, "buyer", [f"chat:{room}"])),
        None,
    ))
    vendor_l = Recorder()
    vendor = run(waypost.BuyerClient.open(
        waypost.BuyerConfig(base_url=server.url, user_id=vendor_id),
        vendor_l,
        waypost.static_token(server.token(vendor_id, "buyer", [f"chat:{room}"])),
        None,
    ))
    chat = vendor.join_chat(room)
    try:
        channels = run(buyer.register_push_token(waypost.PushPlatform.FCM, "fcm-token:py_1"))
        assert channels == [f"chat:{room}"]
        for i in range(3):
            run(vendor.send_message(room, f"m{i}"))
        wait_for("three acknowledged", lambda: sum(
            1 for m in vendor_l.outgoing + vendor_l.messages
            if m.status == waypost.MessageStatus.SENT) >= 3)
        # What FCM would deliver in RemoteMessage.data (string values).
        payload = json.dumps({"kind": "message", "channel": f"chat:{room}", "seq": "3", "count": "3"})
        sync = run(buyer.handle_push(payload))
        assert [m.seq for m in sync.messages] == [1, 2, 3]
        assert [m.body for m in sync.messages] == ["m0", "m1", "m2"]
        assert sync.complete and sync.kind == "message" and sync.count == 3
        assert run(buyer.handle_push(payload)).messages == []
        run(buyer.unregister_push_token())
        with pytest.raises(waypost.WaypostError.InvalidArgument):
            run(buyer.handle_push("not json"))
    finally:
        del chat
        run(vendor.shutdown())
        run(buyer.shutdown())
