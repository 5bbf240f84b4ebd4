"""The Waypost SDK for Python: live delivery tracking (driver GPS buffering
and upload) and order chat, over a Rust core.

Everything uniffi generates (``waypost.waypost``) is re-exported here, plus
async iterators over the SDK's callbacks (``waypost.streams``)::

    async for update in client.track_driver_updates("d-1"):
        print(update.lat, update.lon)
"""

from .waypost import *  # noqa: F401,F403
from . import waypost as waypost  # noqa: F401  (uniffi_set_event_loop lives there)
from .streams import (  # noqa: F401
    Stream,
    StreamOverflowError,
    SubscriptionRefusedError,
    install as _install,
)

_install()
