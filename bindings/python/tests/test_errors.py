"""Errors cross the boundary as typed Python exceptions."""

import asyncio

import pytest

import waypost
from helpers import Platform, Recorder, Tokens, run


def driver_config(tmp_path, **kw):
    base = dict(base_url="http://127.0.0.1:9", driver_id="d-1", device_id="py", buffer_path=str(tmp_path / "b.db"))
    base.update(kw)
    return waypost.DriverConfig(**base)


def test_invalid_config(tmp_path):
    with pytest.raises(waypost.WaypostError.InvalidArgument) as e:
        run(waypost.Driver.open(driver_config(tmp_path, base_url="ftp://x"), Tokens("t"), None, Platform()))
    assert "base_url" in e.value.details
    info = e.value.info()
    assert (info.code, info.http_status, info.retryable, info.retry_after_ms) == ("invalid_argument", None, False, None)
    with pytest.raises(waypost.WaypostError.InvalidArgument):
        run(waypost.Driver.open(driver_config(tmp_path, driver_id="has spaces"), Tokens("t"), None, Platform()))
    with pytest.raises(waypost.WaypostError):  # the common base class catches every variant
        run(waypost.Driver.open(driver_config(tmp_path, max_batch_fixes=0), Tokens("t"), None, Platform()))


def test_foreign_buffer_file_is_a_storage_error(tmp_path):
    path = tmp_path / "foreign.db"
    path.write_text("not a database " * 100)
    with pytest.raises(waypost.WaypostError.Storage) as e:
        run(waypost.Driver.open(driver_config(tmp_path, buffer_path=str(path)), Tokens("t"), None, Platform()))
    assert e.value.code.startswith("storage_")
    assert e.value.info().code == e.value.code and not e.value.info().retryable


def test_shutdown_is_idempotent_and_final(tmp_path):
    driver = run(waypost.Driver.open(driver_config(tmp_path), Tokens("t"), None, Platform()))
    run(driver.shutdown())
    run(driver.shutdown())
    with pytest.raises(waypost.WaypostError.ShutDown):
        driver.start()

    client = run(waypost.BuyerClient.open(waypost.BuyerConfig(base_url="http://127.0.0.1:9", user_id="b-1"), Recorder(), Tokens("t"), None))
    with pytest.raises(waypost.WaypostError.InvalidArgument):
        client.track_driver("no spaces allowed")
    run(client.shutdown())
    run(client.shutdown())
    with pytest.raises(waypost.WaypostError.ShutDown):
        run(client.send_message("room-1", "hello"))


def test_dropped_fixes_say_why(tmp_path):
    driver = run(waypost.Driver.open(driver_config(tmp_path), Tokens("t"), None, Platform()))
    try:
        bad = waypost.Location(ts_ms=1_700_000_000_000, lat=123.0, lon=0.0)
        out = run(driver.record(bad))
        assert out.is_dropped() and out.reason.is_invalid()
    finally:
        run(driver.shutdown())
