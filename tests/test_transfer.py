"""Pretraining and transfer: a run exported as weights (mgr_jax.run.export) starts another task
with its backbone and a fresh head (model.fresh_head), or its own head when asked."""
import json
import os

import jax
import numpy as np
import pytest

from mgr_jax import variables_io
from mgr_jax.errors import UserError
from mgr_jax.run import build, export, pretrained, train
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """A one-epoch base run and its export."""
    root = tmp_path_factory.mktemp("transfer")
    config = tiny_config(num_epochs=1)
    train.train_and_evaluate(config, str(root / "run"))
    meta = export.export(str(root / "run"), str(root / "weights"), which="best")
    return config, root, meta


def _flat(tree):
    return {"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_export_writes_the_best_checkpoint_as_weights(upstream):
    config, root, meta = upstream
    state = train.restore_state(config, str(root / "run"), which="best")
    loaded, saved_meta = variables_io.load_variables(str(root / "weights"))
    want = _flat({"params": state.params, "batch_stats": state.batch_stats})
    got = _flat(loaded)
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    results = json.load(open(root / "run" / "results.json"))
    assert saved_meta == meta and meta["best_epoch"] == results["best_epoch"]
    assert meta["arch"] == config.model.arch and meta["kind"] == "classifier"


@pytest.mark.parametrize("fresh_head", [True, False])
def test_the_downstream_run_keeps_the_backbone_and_gets_a_fresh_head(upstream, fresh_head):
    _, root, _ = upstream
    config = tiny_config(seed=3, **{"model.init_checkpoint": str(root / "weights"),
                                    "model.fresh_head": fresh_head})
    model = build.create_model(config, 10)
    variables = pretrained.load_init_checkpoint(config, model, 10)
    exported = _flat(variables_io.load_variables(str(root / "weights"))[0])
    got = _flat(variables)
    for k in exported:
        if "/fc/" not in k or not fresh_head:
            np.testing.assert_array_equal(got[k], exported[k], err_msg=k)
    if fresh_head:  # the head the run would draw itself (seed-derived), not the upstream's
        init = _flat(model.init(jax.random.fold_in(jax.random.key(3), 1),
                                np.zeros((1, 8, 8, 3), np.float32), train=False))
        for k in [k for k in exported if "/fc/" in k]:
            np.testing.assert_array_equal(got[k], init[k], err_msg=k)
            assert not np.array_equal(got[k], exported[k]) or not np.any(exported[k])


def test_export_refusals_are_one_line(tmp_path, upstream):
    _, root, _ = upstream
    with pytest.raises(UserError, match="holds no run"):
        export.export(str(tmp_path / "nothing"), str(tmp_path / "w"))
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(UserError, match="exists and is not a weights directory"):
        export.export(str(root / "run"), str(tmp_path / "taken"))
    assert (tmp_path / "taken").read_text() == "mine"
    assert not os.path.exists(tmp_path / "w")
