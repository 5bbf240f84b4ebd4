"""Test-side implementations of the SDK's callback interfaces."""

import asyncio
import threading
import time

import waypost

# One event loop for every SDK call of the tests, on its own thread. The
# token provider is async: uniffi runs its coroutines on the loop set with
# `uniffi_set_event_loop` (SDK threads have none of their own), and awaits
# SDK futures on that same loop, so everything goes through `run`.
_LOOP = asyncio.new_event_loop()
threading.Thread(target=_LOOP.run_forever, name="test-event-loop", daemon=True).start()
waypost.waypost.uniffi_set_event_loop(_LOOP)


def run(coro, timeout=60):
    """Runs `coro` on the SDK event loop and waits for its result."""
    return asyncio.run_coroutine_threadsafe(coro, _LOOP).result(timeout)


def Platform(network=waypost.NetworkType.WIFI):
    """The app's one PlatformState, as the tests start it: online, 80 % battery."""
    platform = waypost.PlatformState()
    platform.set_network(network)
    platform.set_battery(waypost.BatteryState(level=0.8, charging=False, low_power_mode=False))
    return platform


class Health(waypost.HealthListener):
    """Keeps every health report."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reports = []

    def on_health(self, health):
        with self.lock:
            self.reports.append(health)

    def codes(self):
        with self.lock:
            return [[i.code for i in r.issues] for r in self.reports]


class Tokens(waypost.TokenProvider):
    def __init__(self, token):
        self._token = token

    async def token(self):
        return self._token

    async def refresh_token(self):
        return self._token


class Recorder(waypost.BuyerListener):
    """Keeps every callback with the Python and native thread it ran on."""

    def __init__(self):
        self.lock = threading.Lock()
        self.threads = []
        self.states = []
        self.locations = []
        self.messages = []
        self.outgoing = []
        self.errors = []
        self.trails = []
        self.statuses = []
        self.receipts = []
        # Trails and locations in arrival order: ("trail", TrailUpdate) /
        # ("location", LocationUpdate).
        self.path = []

    def _seen(self, bucket, item):
        with self.lock:
            self.threads.append((threading.get_ident(), waypost.native_thread_name()))
            bucket.append(item)

    def on_connection_state(self, state):
        self._seen(self.states, state)

    def on_location(self, update):
        self._seen(self.locations, update)
        with self.lock:
            self.path.append(("location", update))

    def on_message(self, message):
        self._seen(self.messages, message)

    def on_outgoing(self, message):
        self._seen(self.outgoing, message)

    def on_presence(self, update):
        self._seen([], update)

    def on_typing(self, update):
        self._seen([], update)

    def on_error(self, reference, code, message):
        self._seen(self.errors, (reference, code, message))

    def on_trail(self, trail):
        self._seen(self.trails, trail)
        with self.lock:
            self.path.append(("trail", trail))

    def on_driver_status(self, status):
        self._seen(self.statuses, status)

    def on_receipt(self, update):
        self._seen(self.receipts, update)


class Events(waypost.DriverListener):
    def __init__(self):
        self.events = []

    def on_event(self, event):
        self.events.append((event, waypost.native_thread_name()))


def route(n, lat0=52.52):
    """n fixes 6 s and ~110 m apart, ending 5 s ago (none throttled, none a jump)."""
    now = int(time.time() * 1000)
    return [
        waypost.Location(
            ts_ms=now - 5_000 - (n - 1 - i) * 6_000,
            lat=lat0 + i * 0.001,
            lon=13.405,
            accuracy_m=8.0,
            speed_mps=18.0,
        )
        for i in range(n)
    ]
