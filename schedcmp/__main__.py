"""`python -m schedcmp` is the `schedcmp` command."""

from .cli import entry_point

entry_point()
