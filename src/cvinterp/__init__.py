"""cvinterp: reproducible figures from the classic papers on interpreting vision networks."""

__version__ = "0.1.0"
