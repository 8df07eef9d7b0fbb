"""Switch: a process-wide on/off flag that a `with switch.off():` block turns off, for comparing a fast path with
the one it stands in for (benchmarks and tests). No gemma4 imports: any module may use it."""
from __future__ import annotations

import contextlib

__all__ = ["Switch"]


class Switch:
    def __init__(self):
        self.on = True

    @contextlib.contextmanager
    def off(self):
        """Off inside the block, back to what it was after."""
        before, self.on = self.on, False
        try:
            yield
        finally:
            self.on = before
