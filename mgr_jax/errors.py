"""Exceptions shared across the library: `main` turns UserError into one line and exit 2."""


class UserError(Exception):
    """Bad input from the user (config value, path, checkpoint): say what and how to fix it."""


class Interrupted(Exception):
    """The run was asked to stop (Ctrl-C, SIGTERM) and stopped between two steps; args: the
    last epoch saved."""


class TrainingDiverged(Exception):
    """A value the run depends on became NaN or infinite: args (first bad step[, what is left]);
    `what` names the value ("the loss", "the synthetic loss syn", "the validation loss")."""

    def __init__(self, step, *rest, what="the loss"):
        super().__init__(step, *rest)
        self.what = what
