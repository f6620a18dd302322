"""The Flax ResNet family against torchvision's published sizes and layer conventions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgr_jax.models import resnet

# Parameter counts of torchvision.models.resnet{18,34,50}(num_classes=1000).
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}


@pytest.mark.parametrize("arch", sorted(TORCHVISION_PARAMS))
def test_parameter_count_matches_torchvision(arch):
    model = resnet.create_model(arch)
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    assert sum(x.size for x in jax.tree.leaves(v["params"])) == TORCHVISION_PARAMS[arch]


@pytest.mark.parametrize("arch,feat", [("resnet18", 512), ("resnet50", 2048)])
def test_outputs_logits_and_pooled_features(arch, feat):
    model = resnet.create_model(arch, num_classes=7)
    x = jnp.zeros((2, 64, 64, 3))
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    logits, feats = jax.eval_shape(lambda v: model.apply(v, x), v)
    assert logits.shape == (2, 7) and feats.shape == (2, feat)


def test_features_are_global_average_pool_and_logits_linear_in_them():
    model = resnet.create_model("resnet18", num_classes=3, width=0.125, cifar_stem=True)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    v = model.init(jax.random.key(0), x)
    logits, feats = model.apply(v, x)
    fc = v["params"]["fc"]
    np.testing.assert_allclose(logits, feats @ fc["kernel"] + fc["bias"], rtol=1e-5, atol=1e-5)


def test_batchnorm_follows_pytorch_conventions():
    """Running stats: (1 - 0.1) * old + 0.1 * batch, with the unbiased batch variance."""
    bn = resnet.TorchBatchNorm()
    x = jax.random.normal(jax.random.key(0), (4, 3, 3, 2)) * 3.0 + 1.0
    v = bn.init(jax.random.key(0), x, train=False)
    y, upd = bn.apply(v, x, train=True, mutable=["batch_stats"])
    xn = np.asarray(x).reshape(-1, 2)
    np.testing.assert_allclose(upd["batch_stats"]["mean"], 0.1 * xn.mean(0), rtol=1e-5)
    np.testing.assert_allclose(upd["batch_stats"]["var"], 0.9 + 0.1 * xn.var(0, ddof=1),
                               rtol=1e-5)
    want = (xn - xn.mean(0)) / np.sqrt(xn.var(0) + 1e-5)  # normalised with the biased variance.
    np.testing.assert_allclose(np.asarray(y).reshape(-1, 2), want, rtol=1e-4, atol=1e-5)


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(ValueError, match="resnet18"):
        resnet.create_model("resnet19")
