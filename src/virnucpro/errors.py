"""The one error type users see: a one-line message, exit code 2, no traceback."""


class VirnucproError(Exception):
    """A problem with the user's input, models or options; the message names the file."""
