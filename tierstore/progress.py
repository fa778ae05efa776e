"""Progress bars for long steps (create, import, export, check, salvage, bench, profile).

One bar per step, drawn by tqdm on stderr, so stdout stays the result alone. A bar shows only
when stderr is a terminal: piped or captured output, logs and CI get none, and callers pass
``enabled=False`` for ``-q`` / ``quiet``.

    with progress(num_rows, "import table.npy") as bar:
        for a, b in chunks:
            ...
            bar.update(b - a)
"""
from __future__ import annotations

import sys


class _Silent:
    """What ``progress`` gives when no bar is shown: the same calls, doing nothing."""

    def update(self, n: int = 1):
        pass

    def set_postfix_str(self, text: str):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def progress(total: int | None, desc: str, *, unit: str = "rows", enabled: bool = True,
             stream=None):
    """A bar counting ``total`` units of ``desc`` (``None``: a count without a total);
    ``update(n)`` adds ``n`` done, ``set_postfix_str`` names the current step. Use it as a
    context manager (or call ``close()``). Shown only when ``enabled`` and ``stream`` (default
    stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if not enabled or isatty is None or not isatty():
        return _Silent()
    from tqdm import tqdm

    if total is None:   # a count of steps: no bar, no rate
        return tqdm(desc=desc, unit=unit, file=stream, leave=True,
                    bar_format="{desc}: {n_fmt} {unit} [{elapsed}{postfix}]")
    return tqdm(total=int(total), desc=desc, unit=unit, unit_scale=unit == "rows", file=stream,
                dynamic_ncols=True, leave=True)
