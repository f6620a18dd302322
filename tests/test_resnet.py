"""The Flax ResNet family against torchvision's published sizes and layer conventions."""
import functools

import flax.linen as nn
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
    model = resnet.create_model("resnet10", num_classes=3, width=0.125, cifar_stem=True)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    v = jax.jit(model.init)(jax.random.key(0), x)  # jitted: eagerly, every op compiles alone
    logits, feats = jax.jit(model.apply)(v, x)
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


def _lax_conv(x, kernel, stride, pad):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


# (input size, kernel, stride): ResNet's last stage at 16x16 and 8x8 inputs, a strided
# 3x3 whose output is smaller than its window, and a 7x7 stem on a small image.
@pytest.mark.parametrize("size,k,stride", [(2, 3, 1), (4, 3, 2), (1, 3, 1), (5, 3, 2),
                                           (4, 7, 2)])
def test_patches_conv_equals_lax_convolution_in_value_and_gradients(size, k, stride):
    kx, kk, kp = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (3, size, size, 5))
    kernel = jax.random.normal(kk, (k, k, 5, 4))
    pad = (k - 1) // 2
    shape = jax.eval_shape(lambda a, b: _lax_conv(a, b, stride, pad), x, kernel).shape
    probe = jax.random.normal(kp, shape)

    @functools.partial(jax.jit, static_argnums=0)  # eagerly every operation compiles alone
    def value_and_grads(f, a, b):
        return jax.value_and_grad(lambda a, b: jnp.sum(probe * f(a, b, stride, pad)),
                                  (0, 1))(a, b)[1], f(a, b, stride, pad)
    (g_lax_all, want), (g_patches_all, got) = (value_and_grads(f, x, kernel)
                                               for f in (_lax_conv, resnet.patches_conv))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for g_lax, g_patches in zip(g_lax_all, g_patches_all):
        np.testing.assert_allclose(g_patches, g_lax, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size,stride,patches", [(2, 1, True), (4, 2, True), (4, 1, False),
                                                 (8, 2, False)])
def test_conv_uses_patches_only_where_the_window_exceeds_the_input_or_output(size, stride,
                                                                            patches):
    conv = resnet.Conv(6, 3, stride)
    x = jax.random.normal(jax.random.key(0), (2, size, size, 4))
    v = conv.init(jax.random.key(1), x)
    jaxpr = str(jax.make_jaxpr(conv.apply)(v, x))
    assert ("conv_general_dilated" not in jaxpr) == patches
    pad = 1
    np.testing.assert_allclose(conv.apply(v, x), _lax_conv(x, v["params"]["kernel"], stride, pad),
                               rtol=1e-5, atol=1e-5)


def test_conv_parameters_are_flax_convs():
    """Same name, shape and initial values as the nn.Conv it replaced (checkpoints load)."""
    x = jnp.zeros((1, 8, 8, 3))
    ours = resnet.Conv(16, 3, 2).init(jax.random.key(3), x)
    flax_conv = nn.Conv(16, (3, 3), (2, 2), padding=((1, 1), (1, 1)), use_bias=False,
                        kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"))
    theirs = flax_conv.init(jax.random.key(3), x)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    np.testing.assert_array_equal(ours["params"]["kernel"], theirs["params"]["kernel"])
    np.testing.assert_allclose(resnet.Conv(16, 3, 2).apply(ours, x + 1.0),
                               flax_conv.apply(theirs, x + 1.0), rtol=1e-5, atol=1e-5)


def test_remat_keeps_variables_and_results_and_recomputes_the_blocks():
    """model.remat: the same variables, the same loss and gradients (recomputed, not
    approximated), and the blocks' convolutions run again in the backward pass (that it
    lowers the memory is checked on GPU and TPU targets: tests/test_aot.py)."""
    plain = resnet.create_model("resnet18", num_classes=10, width=0.25, cifar_stem=True)
    remat = resnet.create_model("resnet18", num_classes=10, width=0.25, cifar_stem=True,
                                remat=True)
    x = jax.random.normal(jax.random.key(1), (32, 32, 32, 3))
    variables = plain.init(jax.random.key(0), x[:1], train=False)
    assert jax.tree.structure(remat.init(jax.random.key(0), x[:1], train=False)) == \
        jax.tree.structure(variables)

    def loss(model):
        def fn(params):
            (logits, _), stats = model.apply({**variables, "params": params}, x, train=True,
                                             mutable=["batch_stats"])
            return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[:, 0]), stats
        return jax.jit(jax.value_and_grad(fn, has_aux=True))

    (a, stats_a), grads_a = loss(plain)(variables["params"])
    (b, stats_b), grads_b = loss(remat)(variables["params"])
    np.testing.assert_allclose(a, b, rtol=1e-6)
    for u, v in zip(jax.tree.leaves((grads_a, stats_a)), jax.tree.leaves((grads_b, stats_b))):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)
    convs = [loss(m).lower(variables["params"]).as_text().count("stablehlo.convolution")
             for m in (plain, remat)]
    # ResNet-18: 20 convolutions forward (the stem and 19 in the blocks, 3 of them shortcuts),
    # two each in the backward pass but the stem's (its input gradient is not needed); remat
    # runs the blocks' 19 once more
    assert convs == [59, 59 + 19], convs
