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


#: The line a job's log ends with where it used a CUDA device (the rehearsal's table reads it).
PEAK_DEVICE = "cvinterp: peak device memory"


def _peak_device_memory() -> None:
    """Print the job's peak CUDA memory (allocated by tensors), where it used a CUDA device."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        peak = max(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count()))
        print(f"{PEAK_DEVICE} {peak / 2**20:.0f} MiB")


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
            _peak_device_memory()
            sys.stdout, sys.stderr = out, err
