"""Train and evaluate a classifier with one of the MGR methods.

    python -m mgr_jax.main --config=configs/default.py --workdir=runs/default \
        [--config.method=pcr] [--config.seed=1]

This file is kept short: the work is in `mgr_jax.train`, importable and testable. Every bad
input (a flag, a config field, the workdir, data, weights) is one line on stderr and exit
status 2; a diverged run is one line and status 3.
"""
import ast
import os
import signal
import stat
import sys
import threading

from absl import app, flags, logging
from ml_collections import config_flags

from mgr_jax.errors import Interrupted, TrainingDiverged, UserError
from mgr_jax.run import compile_cache, config_lib, multihost, train

FLAGS = flags.FLAGS


def define_flags(fv=FLAGS, sys_argv=None):
    """The command's flags on `fv` (`sys_argv`: where --config.x=... overrides are read)."""
    config_flags.DEFINE_config_file("config", None, "Path of a get_config() file.",
                                    flag_values=fv, lock_config=True, sys_argv=sys_argv)
    flags.DEFINE_string("workdir", None, "Run directory (created; re-using it resumes the run).",
                        flag_values=fv)
    flags.DEFINE_integer("max_epochs_this_run", None, "Pause (resumably) after this many epochs.",
                         flag_values=fv)
    flags.DEFINE_string("compilation_cache", None,
                        f"Folder of JAX's persistent compilation cache ('off' turns it off; "
                        f"default ${compile_cache.ENV_VAR} or {compile_cache.DEFAULT_DIR}).",
                        flag_values=fv)
    flags.mark_flags_as_required(["config", "workdir"], flag_values=fv)


def _one_line(e):
    """An exception's message on one line (an embedded traceback: its head and last line)."""
    text = str(e)
    if "Traceback (most recent call last)" in text:
        head = text.split("Traceback (most recent call last)")[0]
        tail = [ln for ln in text.splitlines() if ln.strip()][-1]
        text = f"{head} {tail}"
    return " ".join(text.split())


def _missing_key(e):
    """The field name of ml_collections' KeyError / AttributeError (first quoted word)."""
    while e.args and isinstance(e.args[0], BaseException):
        e = e.args[0]
    text = str(e.args[0]) if e.args else str(e)
    return text.splitlines()[0].strip().strip("\"'")


def _override_of(argv, key):
    """The --config.* argument that names `key`, for the message."""
    for arg in argv[1:]:
        name = arg.lstrip("-").partition("=")[0]
        if name.startswith("config.") and key in name.split(".")[1:]:
            return arg
    return None


def _config_file_error(e):
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    why = f"{type(e).__name__}: {lines[-1]}" if lines else type(e).__name__
    if "has no attribute 'get_config'" in why:
        why = "it defines no get_config()"
    return UserError(f"--config could not be loaded ({why}); give a Python file defining "
                     f"get_config(), e.g. {config_lib.DEFAULTS}")


def _config_path(argv):
    """The --config file's path as given, the last one counting (None when absent)."""
    path = None
    for i, arg in enumerate(argv[1:], 1):
        if arg.startswith(("--config=", "-config=")):
            path = arg.partition("=")[2]
        elif arg in ("--config", "-config") and i + 1 < len(argv):
            path = argv[i + 1]
    return path


def _check_config_file(path):
    """UserError unless `path` is a regular file (a FIFO or a device would block or never
    end when read)."""
    if not path:
        return
    file_part = path.split(":", 1)[0]  # config_flags' "file.py:argument" form
    try:
        mode = os.stat(file_part).st_mode
    except OSError as e:
        raise UserError(f"--config={path}: {e.strerror}; give a Python file defining "
                        f"get_config(), e.g. {config_lib.DEFAULTS}") from None
    if not stat.S_ISREG(mode):
        raise UserError(f"--config={path} is not a regular file; give a Python file defining "
                        f"get_config(), e.g. {config_lib.DEFAULTS}")


def _defines_get_config(path):
    """Whether the config file defines get_config at its top level (read, not run)."""
    try:
        with open(path.split(":", 1)[0]) as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return True  # let the loader's own error speak
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
              if isinstance(t, ast.Name)}
    return "get_config" in names


def parse(argv, fv=FLAGS):
    """Parse `argv` into `fv` and load the config; UserError (one line) for any problem."""
    _check_config_file(_config_path(argv))
    try:
        rest = fv(argv)
    except (KeyError, AttributeError) as e:
        key = _missing_key(e)
        arg = _override_of(argv, key)
        if arg is None:  # raised by the config file itself, not by an override
            raise _config_file_error(e) from None
        raise UserError(f"{arg}: the config has no field {key!r} (a misspelt name? the fields "
                        f"are documented in {config_lib.DEFAULTS})") from None
    except flags.Error as e:
        if "--config must have a value other than None" in str(e):
            raise _config_file_error(AttributeError(
                "module has no attribute 'get_config'") if not _defines_get_config(
                _config_path(argv)) else ValueError("get_config() returned None, not a "
                                                    "ConfigDict")) from None
        raise UserError(f"{_one_line(e)} (see --helpfull)") from None
    except Exception as e:  # noqa: BLE001 (whatever the config file itself raised)
        raise _config_file_error(e) from None
    try:
        config_lib.to_dict(fv.config)  # a config file that failed to load raises here
    except Exception as e:  # noqa: BLE001 (whatever the config file itself raised)
        raise _config_file_error(e) from None
    if len(rest) > 1:
        raise UserError(f"unexpected arguments: {rest[1:]}; flags are --name=value")
    return rest


def parse_or_exit(argv):
    """app.run's flags parser: one line and exit status 2 instead of tracebacks."""
    logging.set_verbosity(logging.ERROR)  # config_flags warns before raising; we say it once
    try:
        return parse(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _stop_on_signals(stop):
    """Ctrl-C and SIGTERM (a scheduler's stop) set `stop`: the run ends after its current step,
    its saves finished and its input workers ended. A second signal stops at once."""
    def handler(signum, frame):
        del frame
        stop.set()
        signal.signal(signum, signal.SIG_DFL if signum == signal.SIGTERM else
                      signal.default_int_handler)
    return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}


def run(fv=FLAGS):
    """Train per parsed flags; returns the exit status."""
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO.
    stop = threading.Event()
    previous = _stop_on_signals(stop)
    try:
        config_lib.validate(fv.config)  # before anything, jax.distributed included
        compile_cache.enable(fv.compilation_cache)
        multihost.initialize(fv.config, multihost.fingerprint(
            config_lib.to_dict(fv.config), fv.workdir, fv.max_epochs_this_run))
        train.train_and_evaluate(fv.config, fv.workdir, fv.max_epochs_this_run, stop=stop)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        left = e.args[1] if len(e.args) > 1 else "see the workdir's checkpoints"
        print(f"error: {e.what} became NaN/inf at step {e.args[0]}; stopped. {left[0].upper()}"
              f"{left[1:]} (lower optimizer.lr or lambda_ and start again with a new "
              "--workdir)", file=sys.stderr)
        return 3
    except (Interrupted, KeyboardInterrupt) as e:
        saved = e.args[0] if isinstance(e, Interrupted) and e.args else None
        print(f"error: stopped by Ctrl-C or SIGTERM{' after epoch ' + str(saved) if saved else ''};"
              f" the epochs saved so far are kept in {fv.workdir}: run the same command to "
              "resume", file=sys.stderr)
        return 130
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 0


def main(argv):
    del argv  # parsed by parse_or_exit
    sys.exit(run())


def cli():
    """The `mgr-jax-train` console script: `python -m mgr_jax.main`'s command line."""
    app.run(main, flags_parser=parse_or_exit)


define_flags()
