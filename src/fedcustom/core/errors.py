"""The one exception type that reaches users as a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from a person (config, data, paths): printed as one line, no traceback."""
