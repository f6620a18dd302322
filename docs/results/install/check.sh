#!/bin/bash
# The library installed into a fresh virtualenv, used outside the checkout (issue 28):
#     bash docs/results/install/check.sh [CHECKOUT] > docs/results/install/check.txt 2>&1
# pip install <checkout>, then from an empty directory: the README's quick start, the NNX
# example (a script of the checkout, importing the installed package) and the main job on the
# installed default config through its console script.
set -ex
CHECKOUT="$(cd "${1:-.}" && pwd)"
VENV="$(mktemp -d)/venv"
WORK="$(mktemp -d)"
python -m venv "$VENV"
time "$VENV/bin/pip" install -q "$CHECKOUT"
cd "$WORK"
"$VENV/bin/python" -c "import mgr_jax; print(mgr_jax.__file__); assert 'site-packages' in mgr_jax.__file__"
"$VENV/bin/python" - "$CHECKOUT" > quickstart.py <<'PY'
import sys
text = open(sys.argv[1] + "/README.md").read()
print(text.split("<!-- quickstart -->\n```python\n", 1)[1].split("```", 1)[0])
PY
time "$VENV/bin/python" quickstart.py
time "$VENV/bin/python" "$CHECKOUT/examples/own_nnx_cnn.py" --steps 50 --hypergradients exact
CONFIG="$("$VENV/bin/python" -c "import mgr_jax.configs.default as c; print(c.__file__)")"
time "$VENV/bin/mgr-jax-train" --config="$CONFIG" --workdir="$WORK/run"
