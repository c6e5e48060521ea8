"""`python -m schedcmp` is the `schedcmp` command."""

from .cli import app

app(prog_name="schedcmp")
