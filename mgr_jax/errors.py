"""Exceptions shared across the library: `main` turns UserError into one line and exit 2."""


class UserError(Exception):
    """Bad input from the user (config value, path, checkpoint): say what and how to fix it."""


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; carries the first bad step."""
