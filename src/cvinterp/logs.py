"""Send a job's output to its Snakemake log file and to the terminal at once."""

from __future__ import annotations

import contextlib
import sys
import traceback
from pathlib import Path


class _Tee:
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
            s.flush()
        return len(text)

    def flush(self):
        for s in self.streams:
            s.flush()

    def isatty(self):
        return False


@contextlib.contextmanager
def logged(log_path: str | Path):
    """Copy stdout and stderr (progress bars included) into `log_path` for the block."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as fh:
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(out, fh), _Tee(err, fh)
        try:
            yield
        except BaseException:
            traceback.print_exc()  # into the log too, so a failed job's log shows why
            raise
        finally:
            sys.stdout, sys.stderr = out, err
