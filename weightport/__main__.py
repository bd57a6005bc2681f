"""`python -m weightport` runs the CLI."""

from .cli import run

run()
