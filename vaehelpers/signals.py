"""SIGINT and SIGTERM (Ctrl-C; `timeout`, a batch scheduler, a closing terminal) for a command that must clean up
before it ends: the first raises :class:`Stopped`, and any further one is ignored, so that the clean-up (worker and
kernel processes ended, Slurm tasks cancelled and said) is never cut short."""

from __future__ import annotations

import contextlib
import signal

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM: the signal, for the exit status (128 + its number: 130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop(signum, frame):
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    raise Stopped(signum)


@contextlib.contextmanager
def stopping():
    """In the ``with`` block, SIGINT and SIGTERM raise :class:`Stopped`, ignoring any further one. After it, their
    handlers are as they were (a caller's own), unless a signal came: the process is ending, and they stay ignored."""
    before = {s: signal.signal(s, _stop) for s in SIGNALS}
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is _stop:
            for s, handler in before.items():
                signal.signal(s, handler)


class deferred:
    """SIGINT and SIGTERM held back for the ``with`` block (where stopping half-way would lose something: a Slurm
    submission and its record): their handler (which Python always runs in the main thread) only notes them; at the
    end the first noted is delivered again to the handler there was before (inside :func:`stopping`: it stops)."""

    def __enter__(self):
        self.noted: list[int] = []
        self.before = {s: signal.signal(s, lambda signum, frame: self.noted.append(signum)) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.before.items():
            signal.signal(s, handler)
        if self.noted:
            signal.raise_signal(self.noted[0])
