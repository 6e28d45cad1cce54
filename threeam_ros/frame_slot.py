"""A single-slot buffer between the camera callback and the inference thread.

The callback never waits: it overwrites the slot, so the worker always gets the newest frame and a frame that was
overwritten before the worker took it is dropped (and counted by the caller).
"""

from __future__ import annotations

import threading
from typing import Any


class LatestFrameSlot:
    def __init__(self):
        self._cond = threading.Condition()
        self._item: Any = None
        self._closed = False

    def put(self, item) -> bool:
        """Store `item`; True when it replaced one the worker had not taken (that one is dropped)."""
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
        return replaced

    def take(self, timeout: float | None = None):
        """The newest item, waiting up to `timeout` s; None on timeout or once closed."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return None if self._closed else item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
