"""Async iterators over the SDK's per-subscription callbacks.

Each iterator opens its own core subscription (``track_driver(id,
listener)``, ``join_chat(room, listener)``, ...) when it is created and
ends it when the iteration stops: ``break``, an exception in the loop body,
the consuming task being cancelled, ``await stream.aclose()`` or ``async
with``. The SDK calls back on its own threads; the listener only hands the
item to the event loop the iterator was created on
(``loop.call_soon_threadsafe``), so a slow consumer never blocks the SDK.

Buffer policy (per iterator): locations and connection states are
conflated (the consumer sees the newest); chat events and order updates
wait in a bounded buffer (``maxsize``, default 1,024) and an iterator that
falls further behind raises :class:`StreamOverflowError` (nothing is
dropped silently: re-read ``messages(room, limit)`` and iterate again);
driver events keep the newest ``maxsize`` (default 256); driver updates
(positions, dead-zone trails, online/offline) wait like chat events
(default 256); health reports are conflated.

Create iterators inside a running event loop (``async def``).
"""

import asyncio
import collections
import weakref

from . import waypost as _w

__all__ = ["Stream", "StreamOverflowError", "SubscriptionRefusedError", "install"]

CHAT_BUFFER = 1024
ORDER_BUFFER = 256
EVENT_BUFFER = 256
DRIVER_BUFFER = 256

_CONFLATE = "conflate"
_FAIL = "fail"
_DROP_OLDEST = "drop_oldest"


class StreamOverflowError(RuntimeError):
    """The consumer fell more than ``capacity`` items behind a stream that must not drop."""

    def __init__(self, what, capacity):
        super().__init__(f"{what}: consumer fell more than {capacity} items behind")
        self.capacity = capacity


class SubscriptionRefusedError(RuntimeError):
    """The server refused the subscription (``code``, e.g. ``forbidden``)."""

    def __init__(self, reference, code, message):
        super().__init__(f"{reference} refused: {code}: {message}")
        self.reference = reference
        self.code = code


class Stream:
    """An async iterator fed from SDK threads; ends its subscription when done."""

    def __init__(self, what, policy, maxsize, subscribe):
        self._loop = asyncio.get_running_loop()
        self._what = what
        self._policy = policy
        self._maxsize = max(1, maxsize)
        self._items = collections.deque()
        self._error = None
        self._wakeup = asyncio.Event()
        self._sub = None
        self._sub = subscribe(self)

    # Called on SDK threads.
    def _push(self, item):
        self._call(self._on_item, item)

    def _fail(self, error):
        self._call(self._on_error, error)

    def _call(self, fn, arg):
        try:
            self._loop.call_soon_threadsafe(fn, arg)
        except RuntimeError:
            # The loop is closed: nobody is iterating any more.
            self.cancel()

    # Called on the event loop.
    def _on_item(self, item):
        if self._sub is None or self._error is not None:
            return
        if len(self._items) >= self._maxsize:
            if self._policy == _FAIL:
                self._on_error(StreamOverflowError(self._what, self._maxsize))
                return
            self._items.popleft()
        self._items.append(item)
        self._wakeup.set()

    def _on_error(self, error):
        if self._error is None:
            self._error = error
        self._wakeup.set()

    def __aiter__(self):
        return self

    async def __anext__(self):
        while not self._items:
            if self._error is not None:
                error, self._error = self._error, None
                self.cancel()
                raise error
            if self._sub is None:
                raise StopAsyncIteration
            self._wakeup.clear()
            try:
                await self._wakeup.wait()
            except BaseException:
                # Cancelled (task cancellation, timeout): end the subscription.
                self.cancel()
                raise
        return self._items.popleft()

    def cancel(self):
        """Ends the core subscription (idempotent); iteration stops after what is buffered."""
        sub, self._sub = self._sub, None
        if sub is not None:
            sub.cancel()

    async def aclose(self):
        self.cancel()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.cancel()

    def __del__(self):
        try:
            self.cancel()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class _Feed:
    """What a listener holds: a weak reference to its stream, so that a
    stream nobody iterates any more (``break``) is freed at once and its
    ``__del__`` ends the subscription (the SDK holds the listener)."""

    def __init__(self, stream):
        self._stream = weakref.ref(stream)

    def push(self, item):
        s = self._stream()
        if s is not None:
            s._push(item)

    def fail(self, error):
        s = self._stream()
        if s is not None:
            s._fail(error)


class _LocationListener(_w.LocationListener):
    def __init__(self, stream, reference, only_locations):
        self._feed = _Feed(stream)
        self._reference = reference
        self._only_locations = only_locations

    def on_location(self, update):
        self._feed.push(update)

    def on_refused(self, code, message):
        self._feed.fail(SubscriptionRefusedError(self._reference, code, message))

    def on_trail(self, trail):
        if not self._only_locations:
            self._feed.push(trail)

    def on_driver_status(self, status):
        if not self._only_locations:
            self._feed.push(status)


class _ChatListener(_w.ChatListener):
    def __init__(self, stream, reference, only_messages):
        self._feed = _Feed(stream)
        self._reference = reference
        self._only_messages = only_messages

    def on_chat_event(self, event):
        if event.is_refused() and event.reference == self._reference:
            self._feed.fail(SubscriptionRefusedError(event.reference, event.code, event.message))
        elif not self._only_messages:
            self._feed.push(event)
        elif self._only_messages == "receipts":
            if event.is_receipt():
                self._feed.push(event.update)
        elif event.is_message():
            self._feed.push(event.entry)


class _StateListener(_w.ConnectionStateListener):
    def __init__(self, stream):
        self._feed = _Feed(stream)

    def on_connection_state(self, state):
        self._feed.push(state)


class _OrderListener(_w.OrderListener):
    def __init__(self, stream):
        self._feed = _Feed(stream)

    def on_entry(self, entry):
        self._feed.push(entry)

    def on_location(self, update):
        self._feed.push(update)

    def on_trail(self, trail):
        self._feed.push(trail)

    def on_driver_status(self, status):
        self._feed.push(status)


class _HealthListener(_w.HealthListener):
    def __init__(self, stream):
        self._feed = _Feed(stream)

    def on_health(self, health):
        self._feed.push(health)


class _DriverListener(_w.DriverListener):
    def __init__(self, stream):
        self._feed = _Feed(stream)

    def on_event(self, event):
        self._feed.push(event)


def track_driver_updates(self, driver_id):
    """One driver's positions (newest known first), conflated: ``async for u in client.track_driver_updates(id)``."""
    ref = f"tracking:{driver_id}"
    return Stream(ref, _CONFLATE, 1, lambda s: self.track_driver(driver_id, _LocationListener(s, ref, True)))


def driver_updates(self, driver_id, maxsize=DRIVER_BUFFER):
    """One driver's ``LocationUpdate``s, ``TrailUpdate``s (dead zones) and ``DriverStatusUpdate``s, in order."""
    ref = f"tracking:{driver_id}"
    return Stream(ref, _FAIL, maxsize, lambda s: self.track_driver(driver_id, _LocationListener(s, ref, False)))


def chat_events(self, room, maxsize=CHAT_BUFFER):
    """One room's ``ChatEvent``s (messages, own messages' status, presence, typing)."""
    ref = f"chat:{room}"
    return Stream(ref, _FAIL, maxsize, lambda s: self.join_chat(room, _ChatListener(s, ref, False)))


def chat_messages(self, room, maxsize=CHAT_BUFFER):
    """The ``ChatEntry``s entering one room's timeline, once per seq, in order."""
    ref = f"chat:{room}"
    return Stream(ref, _FAIL, maxsize, lambda s: self.join_chat(room, _ChatListener(s, ref, True)))


def chat_receipts(self, room, maxsize=CHAT_BUFFER):
    """One room's ``ReceiptUpdate``s: a participant delivered or read it up to a seq."""
    ref = f"chat:{room}"
    return Stream(ref, _FAIL, maxsize, lambda s: self.join_chat(room, _ChatListener(s, ref, "receipts")))


def connection_states(self):
    """The connection state now, then every change (conflated)."""
    return Stream("connection", _CONFLATE, 1, lambda s: self.watch_connection_state(_StateListener(s)))


def order_updates(self, order_id, maxsize=ORDER_BUFFER):
    """One order's ``OrderEntry``s (from seq 1) and its driver's ``LocationUpdate``s, ``TrailUpdate``s and ``DriverStatusUpdate``s."""
    return Stream(f"order:{order_id}", _FAIL, maxsize, lambda s: self.track_order(order_id, _OrderListener(s)))


def events(self, maxsize=EVENT_BUFFER):
    """The driver's ``DriverEvent``s from now on (the newest ``maxsize`` kept).

    The first iterator of a driver also gets, first, the events raised since
    ``Driver.open`` before it subscribed (the newest 256)."""
    return Stream("driver events", _DROP_OLDEST, maxsize, lambda s: self.watch_events(_DriverListener(s)))


def health_updates(self):
    """The driver's ``DriverHealth`` now, then every change (conflated)."""
    return Stream("driver health", _CONFLATE, 1, lambda s: self.add_health_listener(_HealthListener(s)))


def install():
    """Adds the iterators as methods of the generated classes."""
    _w.BuyerClient.track_driver_updates = track_driver_updates
    _w.BuyerClient.driver_updates = driver_updates
    _w.BuyerClient.chat_events = chat_events
    _w.BuyerClient.chat_messages = chat_messages
    _w.BuyerClient.chat_receipts = chat_receipts
    _w.BuyerClient.connection_states = connection_states
    _w.BuyerClient.order_updates = order_updates
    _w.Driver.events = events
    _w.Driver.health_updates = health_updates
