"""Command-line plumbing shared by the converters: where OUT may be written, and errors.

A converter's `main(argv)` builds its parser with `ArgumentParser` (argument errors are one
line, status 2), adds `--overwrite` with `add_overwrite_flag`, and hands the work to `run`:

    def write(staged):                      # a new directory to write OUT's contents into
        module, variables = convert(args.checkpoint)
        save_converted(staged, module, variables, source)
        return f"wrote {args.out_dir} (...)"  # printed on success
    return cli.run(write, args.out_dir, args.overwrite)

`run` refuses, before converting anything, an OUT that exists unless it is a converted
directory (meta.json + variables/, optionally samples.png: see `is_converted_dir`) and
`--overwrite` is given; `write` then fills a temporary sibling of OUT, which is renamed into
place only when complete (an earlier conversion is moved aside first and removed after), so
OUT is never half-written and nothing but an earlier conversion is ever removed. Every error
is one line `error: ...` on stderr and exit status 2 (`EXIT_ERROR`); no traceback.
"""
import argparse
import os
import shutil
import sys
import tempfile

from converters.errors import CheckpointFormatError, ConversionError, UnsafePickleError
from mgr_jax import variables_io

EXIT_ERROR = 2
# What a converter writes into OUT; a directory holding anything else is not replaced.
CONVERTED_ENTRIES = frozenset({variables_io.META_FILE, variables_io.VARIABLES_DIR, "samples.png"})
# Errors whose message says it all; any other exception is reported with its type's name.
_EXPECTED = (OSError, ValueError, NotImplementedError, UnsafePickleError, CheckpointFormatError)


class OutDirError(ConversionError):
    """OUT cannot be written: it exists and is not (or may not be) replaced."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (`error: ...`, status 2) instead of usage + message."""

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_ERROR)


def add_overwrite_flag(parser):
    """Add `--overwrite` (replace OUT when it is an earlier conversion) to `parser`."""
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT if it is an earlier converted directory (meta.json, "
                             "variables/, samples.png only); anything else is never replaced")


def is_converted_dir(path):
    """Whether `path` is a converted-variables directory and nothing else: a real directory
    (not a link) that `variables_io.save_variables` wrote, holding only CONVERTED_ENTRIES."""
    if os.path.islink(path) or not variables_io.is_variables_dir(path):
        return False
    return set(os.listdir(path)) <= CONVERTED_ENTRIES


def check_out_dir(out_dir, overwrite):
    """OutDirError unless `out_dir` is new, or a converted directory and `overwrite` is set."""
    path = os.path.normpath(out_dir)  # "link/" would follow a symbolic link
    if not os.path.lexists(path):
        return
    if not is_converted_dir(path):
        raise OutDirError(f"{out_dir} exists and is not a converted-variables directory (only "
                          "meta.json, variables/ and samples.png); not writing into it: choose "
                          "a new OUT")
    if not overwrite:
        raise OutDirError(f"{out_dir} exists (an earlier conversion); pass --overwrite to "
                          "replace it, or choose a new OUT")


def _make_parents(parent):
    """Create `parent` and missing ancestors; the list of those created, outermost first."""
    created = []
    path = parent
    while path and not os.path.isdir(path):
        created.append(path)
        path = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    return created[::-1]


def _remove_empty(dirs):
    """Remove the directories `_make_parents` created (innermost first) if still empty."""
    for path in reversed(dirs):
        try:
            os.rmdir(path)
        except OSError:
            return


def write_into_place(write, out_dir, overwrite=False):
    """Run `write(staged)` on a new temporary sibling of `out_dir`, then rename it to `out_dir`.

    An existing `out_dir` (checked again just before) is replaced only if it is a converted
    directory and `overwrite` is set. Returns what `write` returned. On failure nothing of it
    is left: no OUT, no temporary directory, no parent directory created for it.
    """
    out_dir = os.path.abspath(out_dir)
    created = _make_parents(os.path.dirname(out_dir))
    done = False
    try:
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.converting-",
                               dir=os.path.dirname(out_dir))
        try:
            staged = os.path.join(tmp, "out")
            result = write(staged)
            if not variables_io.is_variables_dir(staged):
                raise ConversionError(f"the converter wrote no variables for {out_dir}")
            check_out_dir(out_dir, overwrite)
            if os.path.lexists(out_dir):
                os.rename(out_dir, os.path.join(tmp, "replaced"))
            os.rename(staged, out_dir)
            done = True
            return result
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # ours: the staging and the replaced copy
    finally:
        if not done:
            _remove_empty(created)


def error_line(e, limit=2000):
    """One line describing exception `e` for stderr (type added if unusual; at most `limit`
    characters of its message)."""
    text = " ".join(str(e).split())[:limit]
    if isinstance(e, _EXPECTED) and text:
        return f"error: {text}"
    if isinstance(e, MemoryError):
        return "error: out of memory (MemoryError)"
    return f"error: {type(e).__name__}: {text}" if text else f"error: {type(e).__name__}"


def fail(message):
    """Print `error: message` (one line) to stderr; return EXIT_ERROR for main() to return."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    return EXIT_ERROR


def run(write, out_dir, overwrite=False):
    """A converter CLI's body: check OUT, `write_into_place(write, ...)`, print its message.

    Returns 0, or EXIT_ERROR after one `error: ...` line on stderr (any exception; a
    KeyboardInterrupt returns 130). Nothing is written to OUT unless everything succeeded.
    """
    try:
        check_out_dir(out_dir, overwrite)
        message = write_into_place(write, out_dir, overwrite)
    except KeyboardInterrupt:
        print(f"error: interrupted; {out_dir} is unchanged", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a CLI reports every failure in one line
        print(error_line(e), file=sys.stderr)
        return EXIT_ERROR
    if message:
        print(message)
    return 0
