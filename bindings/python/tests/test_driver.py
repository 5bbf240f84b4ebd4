"""Driver flows through the Python bindings against a real server."""

import asyncio

import waypost
from conftest import wait_for
from helpers import Events, Health, Platform, Tokens, route, run


def config(server, driver_id, tmp_path, name="buffer.db"):
    return waypost.DriverConfig(
        base_url=server.url,
        driver_id=driver_id,
        device_id="py-1",
        buffer_path=str(tmp_path / name),
    )


def test_recorded_fixes_arrive_on_the_server(server, unique, tmp_path):
    driver_id = unique("d")
    driver = run(waypost.Driver.open(config(server, driver_id, tmp_path), Tokens(server.token(driver_id, "driver")), None, Platform()))
    try:
        outcomes = run(driver.record_many(route(5)))
        assert all(o.is_recorded() for o in outcomes), outcomes
        seqs = [o.seq for o in outcomes]
        assert seqs == sorted(seqs) and len(set(seqs)) == 5

        result = run(driver.upload_now())
        assert result.pending == 0, result

        trail = server.trail(driver_id)
        assert [f["seq"] for f in trail] == seqs
        assert abs(trail[-1]["lat"] - 52.524) < 1e-9
        assert trail[-1]["battery"] == 0.8, "the platform's battery reading travels with the fix"
        stats = run(driver.stats())
        assert stats.acked_total == 5 and stats.pending == 0
        assert driver.last_recorded().seq == seqs[-1]
    finally:
        run(driver.shutdown())


def test_background_uploader_reports_on_an_sdk_thread(server, unique, tmp_path):
    driver_id = unique("d")
    events = Events()
    driver = run(waypost.Driver.open(config(server, driver_id, tmp_path), Tokens(server.token(driver_id, "driver")), events, Platform()))
    try:
        driver.start()
        run(driver.record_many(route(3)))
        driver.flush()
        wait_for("an Uploaded event", lambda: any(e.is_uploaded() for e, _ in events.events))
        uploaded, thread = next((e, t) for e, t in events.events if e.is_uploaded())
        assert uploaded.fixes == 3
        assert thread == "waypost-rt"
    finally:
        run(driver.shutdown())


def test_offline_fixes_wait_in_the_buffer(server, unique, tmp_path):
    """No network: nothing is sent and health says offline; the PlatformState
    says the network is back: it all arrives, without calling anything else."""
    driver_id = unique("d")
    platform = Platform(network=waypost.NetworkType.OFFLINE)
    driver = run(waypost.Driver.open(config(server, driver_id, tmp_path), Tokens(server.token(driver_id, "driver")), None, platform))
    health = Health()
    sub = driver.add_health_listener(health)
    try:
        driver.start()
        run(driver.record_many(route(4)))
        driver.flush()
        run(driver.upload_now())
        assert run(driver.stats()).pending == 4
        assert run(driver.stats()).requests == 0
        report = driver.health()
        assert [i.code for i in report.issues] == ["offline"], report
        assert not report.ok
        offline = report.issues[0].reason
        assert offline.is_offline() and offline.pending == 4, offline
        assert "offline" in report.summary
        assert platform.set_network(waypost.NetworkType.CELLULAR)
        wait_for("the backlog uploaded", lambda: run(driver.stats()).pending == 0)
        assert len(server.trail(driver_id)) == 4
        wait_for("health clears", lambda: driver.health().ok)
        wait_for("the listener heard both", lambda: health.codes()[-1:] == [[]])
        # Offline with an empty buffer holds nothing back: the report on add
        # is healthy, "offline" comes with the first waiting fix.
        assert health.codes() == [[], ["offline"], []], health.codes()
    finally:
        sub.cancel()
        run(driver.shutdown())


def test_reduced_accuracy_uploads_coarse_fixes(server, unique, tmp_path):
    """Reduced accuracy: 3 km fixes are kept, marked coarse, and reach the
    server with "coarse": true; precise: the same fixes are rejected and
    counted."""
    driver_id = unique("d")
    platform = Platform()
    driver = run(waypost.Driver.open(config(server, driver_id, tmp_path), Tokens(server.token(driver_id, "driver")), None, platform))
    try:
        fuzzy = route(4)
        for loc in fuzzy:
            loc.accuracy_m = 3000.0
        outcomes = run(driver.record_many(fuzzy[:3]))
        assert all(o.is_dropped() and o.reason.is_inaccurate() for o in outcomes), outcomes
        report = driver.health()
        assert [i.code for i in report.issues] == ["fixes_rejected_inaccurate"], report
        assert report.issues[0].reason.count == 3
        assert report.rejected_inaccurate_total == 3

        assert platform.set_accuracy(waypost.AccuracyAuthorization.REDUCED)
        sampling = driver.desired_sampling()
        assert sampling.coarse and sampling.accuracy == waypost.Accuracy.LOW
        [outcome] = run(driver.record_many(fuzzy[3:]))
        assert outcome.is_recorded(), outcome
        assert driver.last_recorded().coarse
        report = driver.health()
        assert [i.code for i in report.issues] == ["accuracy_reduced"], report
        assert report.coarse_recorded_total == 1

        assert run(driver.upload_now()).pending == 0
        trail = server.trail(driver_id)
        assert [f.get("coarse") for f in trail] == [True], trail
        assert trail[0]["accuracy_m"] == 3000.0
    finally:
        run(driver.shutdown())


def test_denied_permission_requests_nothing_and_says_why(server, unique, tmp_path):
    driver_id = unique("d")
    platform = waypost.PlatformState()
    driver = run(waypost.Driver.open(config(server, driver_id, tmp_path), Tokens(server.token(driver_id, "driver")), None, platform))
    try:
        assert driver.desired_sampling().active
        platform.set_permission(waypost.LocationPermission.DENIED)
        assert not driver.desired_sampling().active
        report = driver.health()
        assert report.issues[0].code == "permission_denied"
        assert report.severity == waypost.HealthSeverity.CRITICAL
        assert "permission" in report.issues[0].message
        assert platform.snapshot().permission == waypost.LocationPermission.DENIED
    finally:
        run(driver.shutdown())


def test_concurrent_awaits_share_one_upload(server, unique, tmp_path):
    """Two upload_now() awaited together: one upload in flight at a time, nothing sent twice."""
    driver_id = unique("d")
    driver = run(waypost.Driver.open(config(server, driver_id, tmp_path), Tokens(server.token(driver_id, "driver")), None, Platform()))

    async def both():
        return await asyncio.gather(driver.upload_now(), driver.upload_now())

    try:
        run(driver.record_many(route(6)))
        first, second = run(both())
        assert first.pending == 0 and second.pending == 0
        assert first.requests + second.requests == 1, (first, second)
        assert [f["seq"] for f in server.trail(driver_id)] == list(range(run(driver.stats()).next_seq - 6, run(driver.stats()).next_seq))
    finally:
        run(driver.shutdown())
