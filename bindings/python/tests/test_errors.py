"""Errors cross the boundary as typed Python exceptions."""

import asyncio

import pytest

import waypost
from helpers import Platform, Recorder, Tokens


def driver_config(tmp_path, **kw):
    base = dict(base_url="http://127.0.0.1:9", driver_id="d-1", device_id="py", buffer_path=str(tmp_path / "b.db"))
    base.update(kw)
    return waypost.DriverConfig(**base)


def test_invalid_config(tmp_path):
    with pytest.raises(waypost.WaypostError.InvalidArgument) as e:
        waypost.Driver(driver_config(tmp_path, base_url="ftp://x"), Tokens("t"), None, Platform())
    assert "base_url" in str(e.value)
    with pytest.raises(waypost.WaypostError.InvalidArgument):
        waypost.Driver(driver_config(tmp_path, driver_id="has spaces"), Tokens("t"), None, Platform())
    with pytest.raises(waypost.WaypostError):  # the common base class catches every variant
        waypost.Driver(driver_config(tmp_path, max_batch_fixes=0), Tokens("t"), None, Platform())


def test_foreign_buffer_file_is_a_storage_error(tmp_path):
    path = tmp_path / "foreign.db"
    path.write_text("not a database " * 100)
    with pytest.raises(waypost.WaypostError.Storage):
        waypost.Driver(driver_config(tmp_path, buffer_path=str(path)), Tokens("t"), None, Platform())


def test_shutdown_is_idempotent_and_final(tmp_path):
    driver = waypost.Driver(driver_config(tmp_path), Tokens("t"), None, Platform())
    asyncio.run(driver.shutdown())
    asyncio.run(driver.shutdown())
    with pytest.raises(waypost.WaypostError.ShutDown):
        driver.start()

    client = waypost.BuyerClient(waypost.BuyerConfig(base_url="http://127.0.0.1:9", user_id="b-1"), Recorder(), Tokens("t"), None)
    with pytest.raises(waypost.WaypostError.InvalidArgument):
        client.track_driver("no spaces allowed")
    asyncio.run(client.shutdown())
    asyncio.run(client.shutdown())
    with pytest.raises(waypost.WaypostError.ShutDown):
        client.send_message("room-1", "hello")


def test_dropped_fixes_say_why(tmp_path):
    driver = waypost.Driver(driver_config(tmp_path), Tokens("t"), None, Platform())
    try:
        bad = waypost.Location(ts_ms=1_700_000_000_000, lat=123.0, lon=0.0)
        out = driver.record(bad)
        assert out.is_dropped() and out.reason.is_invalid()
    finally:
        asyncio.run(driver.shutdown())
