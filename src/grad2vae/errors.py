"""Errors that mean "the user must change something": the CLI prints them without a traceback."""


class UserError(Exception):
    """Bad input (unknown name, missing file, wrong hash...): the message says what and what to
    do."""
