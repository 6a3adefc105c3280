"""The one base class of errors caused by what a user handed in (files, specs, options).

The CLI prints such an error as one line and exits with code 2; anything else is a bug and keeps
its traceback.
"""


class AlkitError(Exception):
    """Bad input: the message names the file, spec or option and what is wrong with it."""
