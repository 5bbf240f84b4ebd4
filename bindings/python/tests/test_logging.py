"""SDK logs reach the app's logger through init_logging (process-wide, once)."""

import asyncio
import threading

import pytest

import waypost
from helpers import Platform, Tokens, route, run


class Sink(waypost.LogSink):
    def __init__(self):
        self.lines = []
        self.lock = threading.Lock()

    def log(self, level, target, message):
        with self.lock:
            self.lines.append((level, target, message))


def test_sdk_logs_reach_the_sink(tmp_path):
    with pytest.raises(waypost.WaypostError.InvalidArgument):
        waypost.init_logging("waypost_sdk=notalevel", Sink())

    sink = Sink()
    assert waypost.init_logging("waypost_sdk=debug,warn", sink) is True
    assert waypost.init_logging("trace", Sink()) is False, "only the first logger is installed"

    driver = run(waypost.Driver.open(
        waypost.DriverConfig(base_url="http://127.0.0.1:9", driver_id="d-log", device_id="py", buffer_path=str(tmp_path / "b.db")),
        Tokens("t"),
        None,
        Platform(),
    ))
    try:
        assert run(driver.record(route(1)[0])).is_recorded()  # raises a SamplingChanged event, logged at debug
    finally:
        run(driver.shutdown())
    with sink.lock:
        lines = list(sink.lines)
    events = [line for line in lines if line[1].startswith("waypost_sdk::driver") and "driver event" in line[2]]
    assert events, lines
    level, _, message = events[0]
    assert level == waypost.LogLevel.DEBUG
    assert "SamplingChanged" in message
