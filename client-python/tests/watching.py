"""A blocking watch iterated in a thread, so that a test can wait for its
next event with a deadline instead of hanging."""

from __future__ import annotations

import queue
import threading
from typing import Iterator, Optional, Union

from vaultlet import Event

EVENT_WITHIN = 5.0

_Item = Union[Event, BaseException, None]


class Watcher:
    def __init__(self, events: Iterator[Event]) -> None:
        self._events = events
        self._queue: queue.Queue[_Item] = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self._events:
                self._queue.put(event)
        except BaseException as e:  # handed to the test thread, which re-raises it
            self._queue.put(e)
            return
        self._queue.put(None)

    def _get(self, timeout: float) -> _Item:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout} s") from None

    def next(self, timeout: float = EVENT_WITHIN) -> Event:
        item = self._get(timeout)
        if isinstance(item, BaseException):
            raise item
        assert item is not None, "the watch ended"
        return item

    def failure(self, timeout: float = EVENT_WITHIN) -> BaseException:
        """The exception that ended the watch."""
        item = self._get(timeout)
        assert isinstance(item, BaseException), f"expected the watch to fail, got {item!r}"
        return item

    def ended(self, timeout: float = EVENT_WITHIN) -> None:
        """Waits for the watch to end without an error."""
        item = self._get(timeout)
        assert item is None, f"expected the watch to end, got {item!r}"

    def quiet(self, seconds: float) -> None:
        item: Optional[_Item]
        try:
            item = self._queue.get(timeout=seconds)
        except queue.Empty:
            return
        raise AssertionError(f"expected nothing for {seconds} s, got {item!r}")
