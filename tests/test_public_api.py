"""mgr_jax's public names against docs/api.md: the same names, none private, and each listed
signature the code's (parameter names and kinds); `import mgr_jax` stays light."""
import inspect
import os
import re
import subprocess
import sys

import mgr_jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADING = re.compile(r"^### `([A-Za-z_]\w*)(?:\((.*)\))?`$", re.M)


def _documented():
    """{name: [parameters as written] or None (no signature given)} from docs/api.md."""
    with open(os.path.join(ROOT, "docs", "api.md")) as f:
        text = f.read()
    out = {}
    for match in HEADING.finditer(text):
        name, params = match.groups()
        assert name not in out, f"docs/api.md lists {name} twice"
        out[name] = None if params is None else [p.strip() for p in params.split(",")
                                                   if p.strip()]
    return out


def _written(obj):
    """The parameters of obj as docs/api.md writes them: names, `*` before keyword-only ones,
    `*args` / `**kwargs`; defaults left out."""
    out, keyword_only = [], False
    for p in inspect.signature(obj).parameters.values():
        if p.kind == p.VAR_POSITIONAL:
            out.append(f"*{p.name}")
            keyword_only = True
        elif p.kind == p.VAR_KEYWORD:
            out.append(f"**{p.name}")
        else:
            if p.kind == p.KEYWORD_ONLY and not keyword_only:
                out.append("*")
                keyword_only = True
            out.append(p.name)
    return out


def test_the_documented_names_are_the_package_names():
    documented = _documented()
    assert set(documented) == set(mgr_jax.__all__), (
        f"in docs/api.md only: {sorted(set(documented) - set(mgr_jax.__all__))}; "
        f"in mgr_jax only: {sorted(set(mgr_jax.__all__) - set(documented))}")
    assert not [n for n in mgr_jax.__all__ if n.startswith("_")]
    for name in mgr_jax.__all__:
        assert getattr(mgr_jax, name) is not None
        assert name in dir(mgr_jax)


def test_each_documented_signature_is_the_code_s():
    for name, params in _documented().items():
        obj = getattr(mgr_jax, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert params is None, f"{name}: an error class is listed without a signature"
            continue
        assert params is not None, f"docs/api.md gives no signature for {name}"
        assert params == _written(obj), f"{name}: docs/api.md has ({', '.join(params)}), " \
            f"the code ({', '.join(_written(obj))})"


def test_unknown_and_private_names_are_refused():
    for name in ("build", "_PUBLIC_NOT", "train_and_evaluate"):
        try:
            getattr(mgr_jax, name)
        except AttributeError:
            continue
        raise AssertionError(f"mgr_jax.{name} should not exist")


def test_importing_the_package_loads_no_jax():
    """The names load on first use: the data layer's worker processes import mgr_jax.data
    without paying for jax, flax and optax."""
    code = "import sys, mgr_jax, mgr_jax.data.protocol; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_readme_quick_start_runs_outside_the_checkout(tmp_path):
    """The README's quick-start block, run as it is from an empty directory: the public API and
    the shipped generator are found through the package (installed, or on PYTHONPATH here)."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    block = text.split("<!-- quickstart -->\n```python\n", 1)[1].split("```", 1)[0]
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True,
                         text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    loss, meta = re.fullmatch(r"loss (\S+), meta loss (\S+)\n", out.stdout).groups()
    assert 0 < float(loss) < 10 and 0 < float(meta) < 10
