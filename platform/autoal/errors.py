"""The one exception type users see: the CLI prints its message and exits 2."""


class AutoALError(Exception):
    """A problem with the user's input (data, config, arguments), stated plainly."""
