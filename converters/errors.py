"""The exceptions of the converters: one per kind of problem, shared by every format reader."""


class UnsafePickleError(Exception):
    """The pickle names a global outside the allow-list (nothing of it was imported or run)."""


class CheckpointFormatError(Exception):
    """The file is truncated, corrupt or not a PyTorch checkpoint / pickle."""


class FormatProblem(Exception):
    """Internal: a format problem; `torch_pickle.load` adds the file name and re-raises it as
    CheckpointFormatError."""


class ConversionError(ValueError):
    """A readable checkpoint that does not fit the converter (wrong kind, shapes or settings)."""
