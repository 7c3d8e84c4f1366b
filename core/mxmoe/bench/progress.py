"""Progress of a benchmark run: a tqdm bar when tqdm is installed (the ``bench``
extra) and stderr is a terminal, otherwise one plain line per step on stderr (which
reads well in a log)."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["Progress"]


class Progress:
    """Counts finished steps out of ``total``; :meth:`note` prints a message between
    steps without breaking the bar."""

    def __init__(self, total: int, description: str = "mxmoe bench") -> None:
        self.total = total
        self.done = 0
        self._bar: Any = None
        if not sys.stderr.isatty():
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self._bar = tqdm(total=total, desc=description, unit="row", file=sys.stderr,
                         dynamic_ncols=True)

    def note(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def step(self, label: str) -> None:
        """One step finished; ``label`` says which."""
        self.done += 1
        if self._bar is not None:
            self._bar.set_postfix_str(label, refresh=False)
            self._bar.update(1)
        else:
            print(f"[{self.done}/{self.total}] {label}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
