"""How the Ray engine takes Ctrl-C while it waits on tasks; needs no Ray (tests/cluster runs the engine on a
cluster, tests/engine/test_engine_options.py its errors without Ray)."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from hrlf.engine.ray_engine import deferred_interrupt
from hrlf.errors import Terminated


@pytest.fixture
def as_at_a_terminal():
    """SIGINT and SIGTERM as a command started at a terminal has them (a suite run as a background job of a script
    inherits SIGINT ignored, which the deferral leaves alone: tested last)."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.mark.usefixtures("as_at_a_terminal")
def test_the_first_ctrl_c_is_a_request_the_loop_acts_on_and_the_second_raises_at_once():
    before = signal.getsignal(signal.SIGINT)
    with deferred_interrupt() as interrupt:
        interrupt.check()  # nothing asked yet
        os.kill(os.getpid(), signal.SIGINT)  # delivered to this (the main) thread before kill returns to Python
        assert interrupt.requested.is_set()  # ... and not raised where it landed
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C: out at once, wherever it lands
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.usefixtures("as_at_a_terminal")
def test_sigterm_is_deferred_the_same_way_and_raised_as_terminated():
    before = signal.getsignal(signal.SIGTERM)
    with deferred_interrupt() as interrupt:
        os.kill(os.getpid(), signal.SIGTERM)
        assert interrupt.requested.is_set()
        with pytest.raises(Terminated):
            interrupt.check()
    assert signal.getsignal(signal.SIGTERM) is before


def test_outside_the_main_thread_the_handler_is_left_alone():
    seen: dict[str, object] = {}

    def worker() -> None:
        with deferred_interrupt() as interrupt:
            seen["handler"] = signal.getsignal(signal.SIGINT)
            seen["requested"] = interrupt.requested.is_set()

    before = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == {"handler": before, "requested": False}


def test_a_signal_ignored_on_entry_stays_ignored():
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a background job of a non-interactive shell
    try:
        with deferred_interrupt() as interrupt:
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            interrupt.check()  # not requested: the signal was ignored
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
