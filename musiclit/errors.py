"""The base of every error a user can fix: the command line prints its message instead of a traceback."""


class MusiclitError(Exception):
    """An error caused by input or configuration; its message names the file (or option) and the problem."""


class ConfigError(MusiclitError, ValueError):
    """An option with a value that cannot work; the message names the option."""
