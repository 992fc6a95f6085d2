"""SIGINT and SIGTERM during training: a first signal stops the loop after the step in flight and
a save; a signal during start-up, or a second one, stops at once (but never mid-save)."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM (``signum``) stopped ``train`` before it could return: before training
    started, or by a second signal. ``str()`` is one line; ``exit_code`` is 128 + ``signum``."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class Signals:
    """SIGINT and SIGTERM during ``train`` (handlers live in the main thread only; elsewhere
    nothing changes):

    * before the loop (``training`` False): raise ``Interrupted`` at once;
    * in the loop, the first signal only sets ``signal``: the loop finishes the step in flight,
      saves and returns (``_loop``);
    * a later one raises ``Interrupted`` at once, except while a checkpoint is being saved
      (``deferred``): then it is kept in ``pending`` and ``_save`` raises once the file is
      written;
    * once the final checkpoint is saved (``saved`` set), any signal raises at once.

    Forked child processes (the image cache's decoding workers) inherit the handler. There
    SIGINT (which a terminal's Ctrl-C sends them too) is ignored, since this process stops
    them, and SIGTERM (how the pool stops them) makes them exit quietly, unwinding: a worker
    killed outright while it holds the pool's queue lock would hang the pool's shutdown."""

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.signal = self.pending = self.saved = None
        self.training, self._saving, self._previous = False, False, {}
        self._pid, self._unraisable = os.getpid(), None
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self._SIGNALS}
            self._unraisable, sys.unraisablehook = sys.unraisablehook, self._quiet_unraisable
        return self

    def _quiet_unraisable(self, unraisable) -> None:
        """An ``Interrupted`` raised inside a finalizer (e.g. the image cache's worker pool,
        shut down when its generator is collected) is swallowed there; ``start_training``
        raises it again, so it is not printed as a traceback."""
        if not isinstance(unraisable.exc_value, Interrupted):
            self._unraisable(unraisable)

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:
            if signum != signal.SIGINT:
                raise SystemExit(128 + signum)
            return
        if not self.training:
            self.signal = signum  # for start_training, should some code swallow the exception
            raise Interrupted(signum, "interrupted before training started")
        if self.saved is not None:
            raise Interrupted(signum, f"interrupted at step {self.saved.step}, after saving "
                                      f"{self.saved.path}")
        if self.signal is None:
            self.signal = signum
        elif self._saving:
            self.pending = signum
        else:
            raise Interrupted(signum, "interrupted again: stopped at once, without saving the "
                                      "steps since the last checkpoint")

    def start_training(self) -> None:
        """From now on a first signal stops the loop; raises ``Interrupted`` if a signal came
        during the start-up whose exception was swallowed (by a finalizer, say)."""
        if self.signal is not None:
            raise Interrupted(self.signal, "interrupted before training started")
        self.training = True

    @contextlib.contextmanager
    def deferred(self):
        self._saving = True
        try:
            yield
        finally:
            self._saving = False

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        if self._unraisable is not None:
            sys.unraisablehook, self._unraisable = self._unraisable, None
