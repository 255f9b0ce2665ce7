"""One progress line per loop, that a saved notebook keeps as a one-line summary.

In a notebook the line is a single text output updated in place (a display handle), so the executed
notebook holds only its final state, which reads the same in JupyterLab, on GitHub and as static
HTML; a tqdm widget would leave its first frame (`0%| | 0/24`) behind once closed. In a terminal it
is tqdm's usual bar on stderr. Both draw the same meter (`tqdm.format_meter`).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm

REFRESH_S = 0.5  # a notebook line is redrawn at most this often (every redraw is a kernel message)


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where outputs are displayed and updated), False in a terminal."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in shell.config


class ProgressLine:
    """`update(n, **postfix)` while working, `close(summary)` at the end (also as a context manager).

    `close()` keeps the final meter as the summary, `close(text)` replaces it by `text`, `close("")`
    removes the line (for loops whose caller prints its own summary).
    """

    def __init__(self, total: int, desc: str, unit: str = "it", initial: int = 0, enabled: bool = True):
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.count, self.postfix = initial, ""
        self._initial, self._started, self._drawn = initial, time.perf_counter(), 0.0
        self._handle = self._bar = None
        if not enabled:
            return
        if in_notebook():
            from IPython.display import display

            self._handle = display({"text/plain": self.meter()}, raw=True, display_id=True)
        else:
            self._bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=False, file=sys.stderr)

    def meter(self) -> str:
        """The line as it reads now: description, bar, count, elapsed and rate, postfix."""
        elapsed = time.perf_counter() - self._started
        rate = (self.count - self._initial) / elapsed if elapsed > 0 else None
        return tqdm.format_meter(self.count, self.total, elapsed, ncols=100, prefix=self.desc, unit=self.unit,
                                 rate=rate, postfix=self.postfix or None)

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.count += n
        if postfix:
            self.postfix = ", ".join(f"{key}={value}" for key, value in postfix.items())
        if self._bar is not None:
            self._bar.set_postfix_str(self.postfix, refresh=False)
            self._bar.update(n)
        elif self._handle is not None and time.perf_counter() - self._drawn >= REFRESH_S:
            self._draw(self.meter())

    def close(self, summary: str | None = None) -> None:
        if self._bar is not None:
            self._bar.leave = summary is None  # tqdm reads it when closing
            self._bar.close()
            if summary:
                print(summary, file=sys.stderr)
        elif self._handle is not None:
            self._draw(self.meter() if summary is None else summary)
        self._handle = self._bar = None

    def _draw(self, text: str) -> None:
        self._handle.update({"text/plain": text}, raw=True)
        self._drawn = time.perf_counter()

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
