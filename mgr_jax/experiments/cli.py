"""The command line every experiment command shares: flags, their checks, the entry point.

A command module defines `define_flags(fv)` (its own flags), `kwargs_from_flags(fv)` (its
run() keyword arguments) and `run(...)`, and ends with `cli.main(sys.modules[__name__])`;
`DEFAULT_SEEDS` and `DEFAULT_COMPILATION_CACHE` optionally change the common flags' defaults.
"""
import importlib.util
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mgr_jax.errors import UserError
from mgr_jax.files import read_json
from mgr_jax.run import compile_cache, config_lib


def parse_list(values, cast=str):
    """A comma list flag (string or list) as a list of `cast` values, empty entries dropped."""
    if isinstance(values, str):
        values = values.split(",")
    return [cast(v.strip()) for v in (values or []) if str(v).strip()]


def check_choices(values, allowed=config_lib.METHODS, what="methods"):
    """UserError unless `values` is a non-empty list of names from `allowed`."""
    bad = [v for v in values if v not in allowed]
    if bad:
        raise UserError(f"unknown {what} {bad}; choose from {list(allowed)}")
    if not values:
        raise UserError(f"no {what} given")


def load_config_file(spec, overrides=None):
    """get_config() of a config file ("path.py" or "path.py:arg"), with flat `overrides`."""
    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise UserError(f"config file {path} does not exist")
    name = "_mgr_experiment_config_" + re.sub(r"\W", "_", os.path.abspath(path))
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    if overrides:
        config.update_from_flattened_dict(dict(overrides))
    return config


def define_common_flags(fv, *, seeds="0,1,2", compilation_cache="auto", sys_argv=None):
    """--config (+ --config.x=... overrides), --workdir, --seeds, --runs_dir, --lambda_file,
    --dry_run, --compilation_cache on the FlagValues `fv`."""
    config_flags.DEFINE_config_file(
        "config", None, "Base config file; --config.x=value overrides apply to every run.",
        flag_values=fv, lock_config=True, sys_argv=sys_argv)
    flags.DEFINE_string("workdir", None, "Where tables and figures are written (and, unless "
                        "--runs_dir says otherwise, the runs, in <workdir>/runs).",
                        flag_values=fv)
    flags.DEFINE_string("seeds", seeds, "Comma-separated seeds of every cell.", flag_values=fv)
    flags.DEFINE_string("runs_dir", "", "Directory of the run sub-workdirs (default "
                        "<workdir>/runs). Share one between commands to reuse identical runs.",
                        flag_values=fv)
    flags.DEFINE_string("lambda_file", "", "JSON {method: lambda} (sweep_lambda's "
                        "chosen_lambda.json) applied to runs of those methods.", flag_values=fv)
    flags.DEFINE_boolean("dry_run", False, "List the runs (finished or to do) and stop.",
                         flag_values=fv)
    flags.DEFINE_string("compilation_cache", compilation_cache, "JAX persistent compilation "
                        "cache directory ('auto': <runs_dir>/.jax_cache; '' turns it off). Runs "
                        "that differ only in seed reuse compiled programs.", flag_values=fv)
    flags.mark_flags_as_required(["config", "workdir"], flag_values=fv)


def common_kwargs(fv):
    """run() keyword arguments of the common flags."""
    lambda_map = None
    if fv.lambda_file:
        lambda_map = read_json(fv.lambda_file)
        if lambda_map is None:
            raise UserError(f"--lambda_file={fv.lambda_file} does not exist")
    return {"config": fv.config, "workdir": fv.workdir, "seeds": parse_list(fv.seeds, int),
            "runs_dir": fv.runs_dir or None, "lambda_map": lambda_map, "dry_run": fv.dry_run}


def config_overrides(fv):
    """The --config.x=value overrides given on the command line, flat."""
    return dict(config_flags.get_override_values(fv["config"]))


def _define_all(module, fv, sys_argv=None):
    define_common_flags(fv, seeds=getattr(module, "DEFAULT_SEEDS", "0,1,2"),
                        compilation_cache=getattr(module, "DEFAULT_COMPILATION_CACHE", "auto"),
                        sys_argv=sys_argv)
    module.define_flags(fv)


def parse_command_line(module, argv):
    """A command module's run() keyword arguments for `argv`, parsed on fresh FlagValues
    (in-process: for tests and scripts)."""
    fv = flags.FlagValues()
    _define_all(module, fv, sys_argv=argv)
    fv(argv)
    return module.kwargs_from_flags(fv)


def main(module, argv=None):
    """Entry point of `python -m mgr_jax.experiments.<module>`."""
    fv = flags.FLAGS
    _define_all(module, fv)

    def _main(args):
        if len(args) > 1:
            raise app.UsageError(f"unexpected arguments: {args[1:]}")
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO.
        try:
            kwargs = module.kwargs_from_flags(fv)
            cache = fv.compilation_cache
            if cache == "auto":
                cache = os.path.join(kwargs["runs_dir"] or os.path.join(fv.workdir, "runs"),
                                     ".jax_cache")
            if not fv.dry_run:
                compile_cache.enable(cache)  # '' or 'off': no cache
            module.run(**kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    app.run(_main, argv=argv)
