"""Ctrl-C during training: stop at a consistent point and save, rather than die mid-step."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any


class StopOnInterrupt:
    """The first Ctrl-C asks the loop to stop after the batch in hand (or, during the evaluation that ends
    an epoch, after that epoch's checkpoint), so the checkpoint is consistent; a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping after this batch (or this epoch's evaluation) and saving a checkpoint "
              "(Ctrl-C again to abort now)", file=sys.stderr)

    def __enter__(self) -> StopOnInterrupt:
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
