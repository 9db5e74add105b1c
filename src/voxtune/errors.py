"""The one exception type that the command line turns into a single clear line."""


class VoxtuneError(Exception):
    """A bad input or state the user can fix; the message says what, where and what to do."""
