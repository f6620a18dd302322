"""The one exception type that `main` turns into a one-line message and a non-zero exit."""


class UserError(Exception):
    """Bad input from the user (config value, path, checkpoint): say what and how to fix it."""
