"""User-facing errors. The CLI prints them as one line on stderr and exits with code 2."""


class UserError(Exception):
    """A mistake in the user's input (a flag, a YAML key, a data file): never a traceback."""
