"""Shared test helpers: where the shared fixtures are, and a skip when they are not."""
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.environ.get("MGR_JAX_FIXTURES", os.path.join(ROOT, "..", "shared", "fixtures"))


@pytest.fixture
def fixtures_dir():
    """Path of ../shared/fixtures (beside the clone, as in CI); tests skip without it."""
    if not os.path.isdir(FIXTURES):
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
    return FIXTURES


# The longest files first (pytest-xdist gives each worker whole files, in this order): the
# last files to start are then short ones and the workers finish together.
LONGEST_FIRST = ("test_multihost.py", "test_gan.py", "test_generator_kinds.py", "test_edm.py", "test_library_api.py",
                 "test_experiments.py", "test_mps_diagnostics.py", "test_methods.py",
                 "test_run_refusals.py", "test_sharding.py", "test_stylegan_xl.py",
                 "test_train.py", "test_stylegan2.py", "test_resnet.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept


# XLA's CPU backend without LLVM's optimisation passes: the tests' programs are tiny, so
# compiling them dominates the suite's time, and -O0 halves it; what a program computes does
# not change (the operations and their order are XLA's, not LLVM's). Subprocesses inherit it.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def pytest_configure(config):
    """One persistent compilation cache per test session: tests that build the same program
    (the same config's step, the same reference computation) compile it once. XLA's flags
    are set here, before JAX starts its backend."""
    import tempfile

    # (the accelerator guard in .ci/run compiles with XLA's defaults, as users do)
    if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", "") and \
            os.environ.get("MGR_JAX_XLA_DEFAULT_FLAGS") != "1":
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

    from mgr_jax.run import compile_cache

    directory = os.environ.get(compile_cache.ENV_VAR)
    if not directory:
        directory = tempfile.mkdtemp(prefix="mgr_jax_xla_")
        config._mgr_jax_cache_to_remove = directory
    os.environ[compile_cache.ENV_VAR] = directory  # subprocesses (the CLI tests) share it
    compile_cache.enable(directory, min_compile_seconds=0.5)


def pytest_unconfigure(config):
    import shutil
    directory = getattr(config, "_mgr_jax_cache_to_remove", None)
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
