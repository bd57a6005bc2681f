"""The single place the version lives (read by setup.cfg and written into output files)."""

__version__ = "0.1.0"
