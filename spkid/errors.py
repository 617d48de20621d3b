"""The one exception type the CLI turns into `spkid <cmd>: error: ...` with exit code 1."""


class SpkidError(Exception):
    """A runtime failure the user can act on: the message names the file and the problem."""
