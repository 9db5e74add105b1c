"""For tests that stop a command with SIGINT, as Ctrl-C at a terminal does."""
from __future__ import annotations

import signal


def default_sigint() -> None:
    """preexec_fn: the command starts with SIGINT at its default, as from a terminal, whatever this test
    process inherited (a shell starts background jobs ignoring SIGINT, and the ignore is inherited by
    every child, so `make test &` would run the commands deaf to it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
