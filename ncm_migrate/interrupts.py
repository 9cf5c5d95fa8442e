"""Stopping a run cleanly on Ctrl-C (SIGINT) or SIGTERM, and worker processes that stop
when their parent asks or dies.

The first signal stops the run where it is (the executor records the interrupted step);
any later one is only logged, so that recording it is not cut short.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from .errors import signal_name

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGINT, signal.SIGTERM)
POLL_S = 0.1


class StopRequest:
    """The signal that asked the run to stop, once one came (`signum`).

    The first signal raises `KeyboardInterrupt` in the main thread, where the work runs;
    while `deferred`, it is only noted, for a main thread that waits on workers and tells
    them itself. Any later signal is only logged.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.defer = False
        self.active = True  # in a worker process: False while it waits for work

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        if not self.active:
            return
        if self.signum is not None:
            log.warning("%s received: already stopping, recording where the run stopped",
                        signal_name(signum))
            return
        self.signum = signum
        if not self.defer:
            raise KeyboardInterrupt

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """While inside, a signal is only noted in `signum`."""
        before = self.defer
        self.defer = True
        try:
            yield
        finally:
            self.defer = before


def _installed() -> StopRequest | None:
    for signum in SIGNALS:
        owner = getattr(signal.getsignal(signum), "__self__", None)
        if isinstance(owner, StopRequest):
            return owner
    return None


@contextmanager
def stopping_on_signals() -> Iterator[StopRequest]:
    """SIGINT and SIGTERM stop the run inside, once (see `StopRequest`).

    Handlers are installed only in the main thread (the only one Python allows, and the one
    its signals interrupt): an async twin's worker thread changes nothing. A signal whose
    handler an application set itself is left to it. Nested uses share one request.
    """
    if threading.current_thread() is not threading.main_thread():
        yield StopRequest()
        return
    outer = _installed()
    if outer is not None:
        yield outer
        return
    request = StopRequest()
    before: dict[int, Any] = {}
    for signum in SIGNALS:
        current = signal.getsignal(signum)
        if current in (signal.SIG_DFL, signal.default_int_handler):
            before[signum] = current
            signal.signal(signum, request.handle)
    try:
        yield request
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)


def ignore_signals() -> None:
    """SIGINT and SIGTERM ignored from now on (a command that was stopped, on its way out)."""
    if threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


class WorkerGuard:
    """In a worker process: SIGINT and SIGTERM interrupt the segment it runs (and are ignored
    while it waits for work: its parent decides); a watchdog thread interrupts it too when
    the parent asks (sets `stop` to the signal it received) or dies, and ends an idle worker
    whose parent died."""

    def __init__(self, parent_pid: int, stop: Any) -> None:
        self.parent_pid = parent_pid
        # A multiprocessing RawValue("i"): read without a lock, which a parent killed while
        # holding it would hold forever.
        self.stop = stop
        self.request = StopRequest()
        self.request.active = False
        self._main = threading.main_thread().ident

    def install(self) -> None:
        for signum in SIGNALS:
            signal.signal(signum, self._handle)
        threading.Thread(target=self._watch, name="ncm-parent-watch", daemon=True).start()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.request.handle(signum, frame)

    @property
    def parent_gone(self) -> bool:
        return os.getppid() != self.parent_pid

    def _asked(self) -> int | None:
        """The signal to stop with, when the parent asked or died."""
        if self.parent_gone:
            return int(signal.SIGTERM)
        return int(self.stop.value) or None

    @contextmanager
    def running(self) -> Iterator[StopRequest]:
        """A segment runs inside: a signal now interrupts it."""
        self.request = StopRequest()
        asked = self._asked()
        if asked is not None:
            self.request.signum = asked
            self.request.active = False
            raise KeyboardInterrupt
        try:
            yield self.request
        finally:
            self.request.active = False

    def _watch(self) -> None:
        while True:
            asked = self._asked()
            request = self.request
            if asked is not None and request.active and request.signum is None:
                assert self._main is not None
                signal.pthread_kill(self._main, asked)
            elif self.parent_gone and not request.active:
                log.warning("the parent process is gone: this worker stops")
                os._exit(128 + signal.SIGTERM)
            time.sleep(POLL_S)
