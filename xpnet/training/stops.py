"""Stopping a run on SIGINT or SIGTERM, wherever the signal lands, with the run's state intact.

The first signal is a request. Before training starts nothing needs saving, so it stops at once;
once ``arm()`` has been called, ``fit`` answers it at the next safe point: after the batch in
progress (saving the epoch's state so far), or after the evaluation, checkpoint write or figure
in progress (the epoch's own save). Either way one line says which checkpoint holds the run. A
second signal stops at once, abandoning a checkpoint write in progress (writes are atomic, so
the previous file stays), and says so and what is kept.

SIGTERM is what ``kill``, schedulers and containers send. A shell starts a background job with
SIGINT ignored; it stays ignored here, and SIGTERM stops such a job. Under ``mpiexec`` each rank
sees the signal it is sent; ``fit`` asks every rank at its safe points, so all stop at the same
step.

    with StopRequests() as stops:       # in the main thread: handlers installed, then restored
        ... load data ...               # a signal here raises Interrupted at once
        stops.arm("no checkpoint was saved yet")
        fit(..., stops=stops)           # a signal here is honoured at the next safe point
"""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A stop by signal: ``exit_code`` is 128 + the signal's number (130 for SIGINT, 143 for
    SIGTERM), ``message`` the line to print, if any is left to say."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message)
        self.signum, self.message = signum, message
        self.exit_code = 128 + signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopRequests:
    """The run's handler of SIGINT and SIGTERM (see the module doc)."""

    def __init__(self):
        self.signum = None  # the first signal received, once one is
        self.armed = False
        self.kept = "nothing was saved"
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def arm(self, kept: str) -> None:
        """From now on a first signal waits for a safe point; ``kept`` says what holds the run
        should a second signal stop it at once (``keep`` updates it)."""
        self.armed, self.kept = True, kept

    def keep(self, kept: str) -> None:
        """What a stop at once would leave: after each save, the file just written."""
        self.kept = kept

    def agree(self, comm) -> bool:
        """Whether any rank has a request (every rank calls it at the same point); a rank that got
        no signal itself stops as if it had got SIGINT."""
        if comm.any(self.requested) and self.signum is None:
            self.signum = signal.SIGINT
        return self.requested

    def interrupted(self, message: str = "") -> Interrupted:
        return Interrupted(self.signum if self.signum is not None else signal.SIGINT, message)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                previous = signal.getsignal(signum)
                if previous is signal.SIG_IGN:
                    continue  # a background job's SIGINT: the shell meant it to be ignored
                self._previous[signum] = previous
                signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum, frame):
        name = signal_name(signum)
        if self.signum is not None:
            raise Interrupted(self.signum, f"second {name}: stopped at once; {self.kept}")
        self.signum = signum
        if not self.armed:
            raise Interrupted(signum, f"{name}: stopped before training began; {self.kept}")
