"""The one exception type for bad input: the CLI prints its message as one line and exits non-zero."""


class DDPMError(Exception):
    """Bad input or a broken file: a message meant for the user, never a bug in ddpm."""
