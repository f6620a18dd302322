"""StyleGAN2-ADA: fixture outputs for every snapshot route, and self-consistency checks.

The fixture tests are parametrised over (checkpoint, npz, kwargs json) triples found in the
fixtures directory: any `sg2ada_*.npz` with a `.pkl` snapshot and/or a `.G_ema.pt` + `.json` of
the same name is picked up. Tolerance atol 1e-4 (fixtures README: float32 round-off; we see
~1e-5). The other tests use tiny random generators and compare with hand or numpy computations.
"""
import functools
import glob
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FIXTURES
from PIL import Image

from converters import pickle_writer, torch_pickle
from converters import stylegan2_ada as converter
from mgr_jax.generators import stylegan2_ada as sg_generator
from mgr_jax.models import stylegan2

ATOL = 1e-4


def _cases():
    """(checkpoint, npz, kwargs json or None) for each sg2ada fixture route present."""
    cases = []
    for npz in sorted(glob.glob(os.path.join(FIXTURES, "sg2ada_*.npz"))):
        stem = npz[:-len(".npz")]
        if os.path.exists(stem + ".pkl"):
            cases.append((os.path.basename(stem + ".pkl"), os.path.basename(npz), None))
        if os.path.exists(stem + ".G_ema.pt") and os.path.exists(stem + ".json"):
            cases.append((os.path.basename(stem + ".G_ema.pt"), os.path.basename(npz),
                          os.path.basename(stem + ".json")))
    # Without the fixtures the known pair still yields (skipped) tests.
    return cases or [("sg2ada_cond10_res32.pkl", "sg2ada_cond10_res32.npz", None),
                     ("sg2ada_cond10_res32.G_ema.pt", "sg2ada_cond10_res32.npz",
                      "sg2ada_cond10_res32.json")]


CASES = _cases()


def nhwc(a):
    """NCHW fixture array -> NHWC."""
    return np.transpose(a, (0, 2, 3, 1))


# conftest's fixtures_dir is function-scoped, so conversions are cached by path instead.
@functools.lru_cache(maxsize=None)
def _converted(fixtures, case):
    ckpt, _, kwargs_json = case
    kwargs = {} if kwargs_json is None else {"kwargs_json": os.path.join(fixtures, kwargs_json)}
    module, variables = converter.convert(os.path.join(fixtures, ckpt), **kwargs)
    return module, variables


@functools.lru_cache(maxsize=None)
def _apply_fn(module):
    return jax.jit(module.apply, static_argnames=("noise_mode", "truncation_cutoff", "method"))


def _fixture(fixtures_dir, case):
    module, variables = _converted(fixtures_dir, case)
    ref = dict(np.load(os.path.join(fixtures_dir, case[1])))
    cutoff = int(ref.get("truncation_cutoff", -1))
    ref["cutoff"] = None if cutoff < 0 else cutoff  # the fixtures store "none" as -1
    return module, variables, ref


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_fixture_mapping(fixtures_dir, case):
    module, variables, ref = _fixture(fixtures_dir, case)
    apply = _apply_fn(module)
    ws = apply(variables, ref["z"], ref["c"], method="mapping")
    np.testing.assert_allclose(ws, ref["ws"], rtol=0, atol=ATOL)
    ws_t = apply(variables, ref["z"], ref["c"], truncation_psi=float(ref["truncation_psi"]),
                 truncation_cutoff=ref["cutoff"], method="mapping")
    np.testing.assert_allclose(ws_t, ref["ws_truncated"], rtol=0, atol=ATOL)


@pytest.mark.parametrize("mode", ["const", "none"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_fixture_images(fixtures_dir, case, mode):
    module, variables, ref = _fixture(fixtures_dir, case)
    img = _apply_fn(module)(variables, ref["z"], ref["c"], noise_mode=mode)
    assert img.dtype == jnp.float32
    np.testing.assert_allclose(img, nhwc(ref[f"img_noise_{mode}"]), rtol=0, atol=ATOL)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_fixture_truncated_images(fixtures_dir, case):
    module, variables, ref = _fixture(fixtures_dir, case)
    img = _apply_fn(module)(variables, ref["z"], ref["c"],
                            truncation_psi=float(ref["truncation_psi"]),
                            truncation_cutoff=ref["cutoff"], noise_mode="const")
    np.testing.assert_allclose(img, nhwc(ref["img_truncated"]), rtol=0, atol=ATOL)


# ---------------------------------------------------------------------------------------------
# Tiny random generators


def _tiny(seed=0, **overrides):
    """A small Generator and its variables, with biases, noise strengths and w_avg non-zero."""
    kwargs = dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3, mapping_layers=2,
                  channel_base=64, channel_max=8)
    kwargs.update(overrides)
    module = stylegan2.Generator(**kwargs)
    rng = np.random.default_rng(seed + 1000)

    def perturb(path, leaf):
        if path[-1].key in ("bias", "noise_strength", "w_avg"):  # zero at init: make them count
            return leaf + jnp.asarray(0.3 * rng.standard_normal(leaf.shape), jnp.float32)
        return leaf

    variables = stylegan2.random_variables(module, seed)
    return module, jax.tree_util.tree_map_with_path(perturb, variables)


def _inputs(module, n=2, seed=5):
    z = jax.random.normal(jax.random.key(seed), (n, module.z_dim))
    c = jax.nn.one_hot(jnp.arange(n) % module.c_dim, module.c_dim) if module.c_dim else None
    return z, c


@pytest.mark.parametrize("res,arch,layers,c_dim", [
    (4, "skip", 1, 0), (8, "orig", 3, 4), (8, "resnet", 2, 0), (64, "skip", 8, 3)])
def test_configurations_build(res, arch, layers, c_dim):
    module, variables = _tiny(img_resolution=res, architecture=arch, mapping_layers=layers,
                              c_dim=c_dim, channel_base=256, conv_clamp=256.0)
    z, c = _inputs(module)
    apply = _apply_fn(module)
    img = apply(variables, z, c)
    ws = apply(variables, z, c, method="mapping")
    num_ws = 2 * int(math.log2(res)) - 2  # one w per conv, plus the last ToRGB
    assert module.num_ws == num_ws
    assert img.shape == (2, res, res, 3) and ws.shape == (2, num_ws, 8)
    assert np.all(np.isfinite(img))
    np.testing.assert_allclose(apply(variables, ws, method="synthesis"), img, atol=1e-6)
    params = variables["params"]
    assert sorted(params["mapping"]) == sorted(
        [f"fc{i}" for i in range(layers)] + (["embed"] if c_dim else []))
    blocks = params["synthesis"]
    assert sorted(blocks) == sorted(f"b{2 ** i}" for i in range(2, int(math.log2(res)) + 1))
    with_rgb = [b for b in blocks if "torgb" in blocks[b]]
    assert with_rgb == (list(blocks) if arch == "skip" else [f"b{res}"])
    with_skip = sorted(b for b in blocks if "skip" in blocks[b])
    assert with_skip == (sorted(b for b in blocks if b != "b4") if arch == "resnet" else [])


def test_skip_architecture_adds_upsampled_rgb():
    """skip: with the last ToRGB zeroed, G8(ws) == FIR-upsampled G4(first ws), in numpy."""
    g8, v8 = _tiny(img_resolution=8)
    g4 = stylegan2.Generator(**{**converter.module_kwargs_of(g8), "img_resolution": 4,
                                "resample_filter": (1, 3, 3, 1)})
    v4 = {col: {"mapping": v8[col]["mapping"], "synthesis": {"b4": v8[col]["synthesis"]["b4"]}}
          for col in v8}
    v8 = jax.tree.map(lambda x: x, v8)  # a copy we may edit
    torgb = v8["params"]["synthesis"]["b8"]["torgb"]
    ws = _apply_fn(g8)(v8, *_inputs(g8), method="mapping")
    full = _apply_fn(g8)(v8, ws, method="synthesis")
    torgb["weight"] = jnp.zeros_like(torgb["weight"])
    torgb["bias"] = jnp.zeros_like(torgb["bias"])
    img8 = _apply_fn(g8)(v8, ws, method="synthesis")
    img4 = _apply_fn(g4)(v4, ws[:, :2], method="synthesis")
    want = _np_upfirdn2d(np.asarray(img4), stylegan2.setup_filter([1, 3, 3, 1]), up=2,
                         pad=(2, 1, 2, 1), gain=4)
    np.testing.assert_allclose(img8, want, atol=1e-5)
    assert np.max(np.abs(full - img8)) > 1e-3  # the last ToRGB does contribute normally


def test_resnet_block_and_orig_output():
    """resnet: block out = sqrt(.5) 1x1conv(up(x)) + conv1 out; orig: image = last ToRGB."""
    module, variables = _tiny(img_resolution=8, architecture="resnet")
    z, c = _inputs(module)
    _, state = module.apply(variables, z, c, capture_intermediates=True,
                            mutable=["intermediates"])
    inter = state["intermediates"]["synthesis"]
    x4 = np.asarray(inter["b4"]["__call__"][0][0])
    x8 = inter["b8"]["__call__"][0][0]
    skip = inter["b8"]["skip"]["__call__"][0]
    conv1 = inter["b8"]["conv1"]["__call__"][0]
    np.testing.assert_allclose(x8, skip + conv1, atol=1e-6)
    w = np.asarray(variables["params"]["synthesis"]["b8"]["skip"]["weight"])[0, 0]
    up = _np_upfirdn2d(x4, stylegan2.setup_filter([1, 3, 3, 1]), up=2, pad=(2, 1, 2, 1), gain=4)
    want = math.sqrt(0.5) * (up @ w) / math.sqrt(w.shape[0])
    np.testing.assert_allclose(skip, want, atol=1e-4)
    img = module.apply(variables, z, c)
    np.testing.assert_allclose(img, inter["b8"]["torgb"]["__call__"][0], atol=1e-6)


def test_truncation_cutoff_matches_hand_computation():
    module, variables = _tiny(img_resolution=8, c_dim=3)
    z, c = _inputs(module, n=3)
    apply = _apply_fn(module)
    ws = np.asarray(apply(variables, z, c, method="mapping"))
    w_avg = np.asarray(variables["buffers"]["mapping"]["w_avg"])
    assert np.abs(w_avg).max() > 0.1
    moved = w_avg + 0.6 * (ws - w_avg)
    for cutoff, n_moved in [(None, 4), (2, 2), (-1, 3), (100, 4)]:
        got = apply(variables, z, c, truncation_psi=0.6, truncation_cutoff=cutoff,
                    method="mapping")
        want = np.concatenate([moved[:, :n_moved], ws[:, n_moved:]], axis=1)
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"cutoff {cutoff}")
    img = apply(variables, z, c, truncation_psi=0.6, truncation_cutoff=2)
    want = apply(variables, jnp.asarray(np.concatenate([moved[:, :2], ws[:, 2:]], 1)),
                 method="synthesis")
    np.testing.assert_allclose(img, want, atol=1e-5)


def test_noise_modes():
    """random: reproducible per key, per sample, and unlike const; none unlike const."""
    module, variables = _tiny()
    z, _ = _inputs(module)
    apply = _apply_fn(module)
    # 'random' through the Generator wrapper, which passes rngs={"noise": rng} to apply.
    gen = sg_generator.from_module(module, variables, noise_mode="random")
    sample = jax.jit(gen.sample)
    labels = jnp.zeros((2,), jnp.int32)  # ignored: c_dim 0
    k1, k2 = jax.random.split(jax.random.key(3))
    r1 = sample(variables, z, labels, rng=k1)
    r1b = sample(variables, z, labels, rng=k1)
    r2 = sample(variables, z, labels, rng=k2)
    const = jnp.clip(apply(variables, z, None, noise_mode="const"), -1, 1)
    none = jnp.clip(apply(variables, z, None, noise_mode="none"), -1, 1)
    np.testing.assert_array_equal(r1, r1b)
    for a, b in [(r1, r2), (r1, const), (const, none)]:
        assert np.max(np.abs(a - b)) > 1e-3
    # Per-sample random noise: two equal inputs get different images.
    rr = sample(variables, jnp.concatenate([z[:1], z[:1]]), labels, rng=k1)
    assert np.max(np.abs(rr[0] - rr[1])) > 1e-3
    with pytest.raises(ValueError, match="rng"):
        gen.sample(variables, z, labels)
    with pytest.raises(ValueError, match="noise_mode"):
        apply(variables, z, None, noise_mode="bogus")


def test_gradient_wrt_z_is_finite_and_nonzero():
    module, variables = _tiny(c_dim=2)
    z, c = _inputs(module)
    grad = jax.jit(jax.grad(lambda z: jnp.sum(module.apply(variables, z, c) ** 2)))(z)
    assert np.all(np.isfinite(grad)) and np.max(np.abs(grad)) > 1e-6


def test_bfloat16_compute_is_close():
    module, variables = _tiny(img_resolution=16)
    bf16 = stylegan2.Generator(**{**converter.module_kwargs_of(module), "dtype": "bfloat16",
                                  "resample_filter": (1, 3, 3, 1)})
    z, c = _inputs(module)
    ref = _apply_fn(module)(variables, z, c)
    got = _apply_fn(bf16)(variables, z, c)
    assert got.dtype == jnp.float32
    # bf16 keeps ~3 significant digits; across 6 layers a few percent of the range is expected.
    assert np.max(np.abs(got - ref)) < 0.05 * np.max(np.abs(ref))


# ---------------------------------------------------------------------------------------------
# Ops against direct numpy computations


def _np_upfirdn2d(x, f, up=1, down=1, pad=(0, 0, 0, 0), gain=1.0):
    """Scatter form: input pixel (i, j) adds gain * f at output up*i + pad - (fh-1) + tap."""
    n, h, w, ch = x.shape
    fh, fw = f.shape
    px0, px1, py0, py1 = pad
    oh, ow = h * up + py0 + py1 - fh + 1, w * up + px0 + px1 - fw + 1
    out = np.zeros((n, oh, ow, ch))
    for i in range(h):
        for j in range(w):
            for a in range(fh):
                for b in range(fw):
                    oi, oj = up * i + py0 - (fh - 1) + a, up * j + px0 - (fw - 1) + b
                    if 0 <= oi < oh and 0 <= oj < ow:
                        out[:, oi, oj] += gain * f[a, b] * x[:, i, j]
    return out[:, ::down, ::down]


def _np_correlate(x, w, pad):
    """One sample: x (H, W, I), w (kh, kw, I, O), zero padding -> (H', W', O)."""
    xp = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    kh, kw = w.shape[:2]
    oh, ow = xp.shape[0] - kh + 1, xp.shape[1] - kw + 1
    out = np.zeros((oh, ow, w.shape[3]))
    for i in range(oh):
        for j in range(ow):
            out[i, j] = np.einsum("abi,abio->o", xp[i:i + kh, j:j + kw], w)
    return out


@pytest.mark.parametrize("taps,up,down,pad,gain", [
    ((1, 3, 3, 1), 2, 1, (2, 1, 2, 1), 4.0),     # upsample2d as used for the skip images
    ((1, 3, 3, 1), 1, 1, (1, 1, 1, 1), 4.0),     # the FIR after the transposed conv
    ((1, 2, 3, 4), 2, 1, (3, -1, 0, 2), 1.0),    # asymmetric filter (flip) and a crop
    ((1, 3, 3, 1), 1, 2, (-1, 2, 1, 1), 1.0),    # downsampling
])
def test_upfirdn2d_matches_numpy(taps, up, down, pad, gain):
    x = np.random.default_rng(0).normal(size=(2, 5, 6, 3)).astype(np.float32)
    f = stylegan2.setup_filter(taps)
    got = stylegan2.upfirdn2d(jnp.asarray(x), f, up=up, down=down, padding=pad, gain=gain)
    np.testing.assert_allclose(got, _np_upfirdn2d(x, f, up, down, pad, gain), atol=1e-5)
    if taps == (1, 3, 3, 1) and up == 2:
        np.testing.assert_allclose(stylegan2.upsample2d(jnp.asarray(x), f), got, atol=1e-6)


@pytest.mark.parametrize("up,demodulate", [(1, True), (2, True), (1, False)])
def test_modulated_conv_matches_per_sample_numpy(up, demodulate):
    """Against explicit per-sample weights w*s, demodulated; up=2 via the generic path."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 4, 5, 3)).astype(np.float32)
    k = 3 if demodulate else 1
    weight = rng.normal(size=(k, k, 3, 4)).astype(np.float32)
    styles = rng.normal(size=(2, 3)).astype(np.float32)
    f = stylegan2.setup_filter([1, 3, 3, 1])
    out_hw = (4 * up, 5 * up)
    noise = rng.normal(size=(2,) + out_hw + (1,)).astype(np.float32)
    got = stylegan2.modulated_conv2d(jnp.asarray(x), jnp.asarray(weight), jnp.asarray(styles),
                                     noise=jnp.asarray(noise), up=up, padding=k // 2,
                                     resample_filter=f, demodulate=demodulate)
    want = []
    for n in range(2):
        wn = weight * styles[n][None, None, :, None]
        if demodulate:
            wn = wn / np.sqrt(np.sum(wn ** 2, axis=(0, 1, 2)) + 1e-8)
        if up == 1:
            y = _np_correlate(x[n], wn, k // 2)
        else:
            # The official generic path: zero-insert, pad (p+2, p+1), FIR x4, true conv.
            u = _np_upfirdn2d(x[n:n + 1], f, up=2, pad=(3, 2, 3, 2), gain=4)[0]
            y = _np_correlate(u, wn[::-1, ::-1], 0)
        want.append(y + noise[n])
    np.testing.assert_allclose(got, np.stack(want), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Loading: synthetic snapshots, refusals, the CLI and the Generator wrapper


def _write_snapshot(path, module, variables):
    """A snapshot .pkl laid out like the official one (persistent objects), from Flax vars."""
    P = pickle_writer

    def to_torch(key, a):
        a = np.asarray(a, np.float32)
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "weight" and a.ndim == 2:
            return a.T
        if leaf == "weight" and a.ndim == 4:
            return a.transpose(3, 2, 0, 1)
        return a.transpose(2, 0, 1) if leaf == "const" else a

    tree = {}
    for col in ("params", "buffers"):
        for path_, leaf in jax.tree_util.tree_flatten_with_path(variables[col])[0]:
            names = [p.key for p in path_]
            node = tree
            for name in names[:-1]:
                node = node.setdefault(name, {})
            value = to_torch(".".join(names), leaf)
            if col == "params":
                value = P.Reduce(P.Global("torch._utils", "_rebuild_parameter"),
                                 (value, True, P.Reduce(P.Global("collections", "OrderedDict"),
                                                        ())))
            node[names[-1]] = (col, value)

    def persistent(node, class_name, init_kwargs=None):
        state = {"training": False, "_parameters": {}, "_buffers": {}, "_modules": {}}
        for name, child in node.items():
            if isinstance(child, tuple):
                state["_parameters" if child[0] == "params" else "_buffers"][name] = child[1]
            else:
                state["_modules"][name] = persistent(child, "Module")
        if init_kwargs is not None:
            state.update(_init_args=(), _init_kwargs=init_kwargs, num_ws=module.num_ws)
        meta = {"type": "class", "version": 4, "class_name": class_name,
                "module_src": "raise SystemExit('the snapshot source must never run')",
                "state": state}
        return P.Reduce(P.Global("torch_utils.persistence", "_reconstruct_persistent_obj"),
                        (meta,))

    easy = lambda d: P.Reduce(P.Global("dnnlib.util", "EasyDict"), (d,))  # noqa: E731
    init_kwargs = easy({
        "z_dim": module.z_dim, "w_dim": module.w_dim, "c_dim": module.c_dim,
        "img_resolution": module.img_resolution, "img_channels": module.img_channels,
        "mapping_kwargs": easy({"num_layers": module.mapping_layers}),
        "synthesis_kwargs": easy({"channel_base": module.channel_base,
                                  "channel_max": module.channel_max, "num_fp16_res": 4,
                                  "conv_clamp": module.conv_clamp,
                                  "architecture": module.architecture})})
    snapshot = {"G": None, "D": None, "G_ema": persistent(tree, "Generator", init_kwargs),
                "augment_pipe": None, "training_set_kwargs": easy({"resolution": 8})}
    with open(path, "wb") as f:
        f.write(P.dumps_plain(snapshot))


@pytest.mark.parametrize("overrides", [
    dict(img_resolution=8, architecture="resnet", c_dim=0),
    dict(img_resolution=16, architecture="orig", c_dim=3, mapping_layers=3, conv_clamp=0.5),
], ids=["resnet_uncond", "orig_cond_clamped"])
def test_synthetic_snapshot_round_trip(tmp_path, overrides):
    module, variables = _tiny(seed=7, **overrides)
    path = str(tmp_path / "network-snapshot-000000.pkl")
    _write_snapshot(path, module, variables)
    got_module, got_vars = converter.convert(path)
    assert converter.module_kwargs_of(got_module) == converter.module_kwargs_of(module)
    z, c = _inputs(module)
    img = _apply_fn(got_module)(got_vars, z, c)
    np.testing.assert_allclose(img, _apply_fn(module)(variables, z, c), atol=1e-6)
    if module.conv_clamp is not None:  # orig: the image is one ToRGB output, clamped
        assert np.max(np.abs(img)) == pytest.approx(module.conv_clamp)


@pytest.mark.parametrize("module_name,func,arg", [
    ("os", "system", "touch {marker}"),
    ("builtins", "eval", "open({marker!r}, 'w')"),
])
def test_malicious_pickle_is_refused(tmp_path, module_name, func, arg):
    marker = str(tmp_path / "pwned")
    payload = arg.format(marker=marker).replace("\\", "\\\\").replace("'", "\\'")
    # {'G_ema': module.func(payload)} in protocol-2 opcodes: a booby-trapped snapshot.
    data = (b"\x80\x02}S'G_ema'\nc" + f"{module_name}\n{func}\n".encode() + b"(S'"
            + payload.encode() + b"'\ntRs.")
    path = tmp_path / "network-snapshot-evil.pkl"
    path.write_bytes(data)
    with pytest.raises(torch_pickle.UnsafePickleError, match=f"{module_name}\\.{func}"):
        converter.convert(str(path))
    assert not os.path.exists(marker)


def test_state_dict_needs_matching_hyper_parameters(fixtures_dir):
    pt = os.path.join(fixtures_dir, "sg2ada_cond10_res32.G_ema.pt")
    with pytest.raises(ValueError, match="hyper-parameters"):
        converter.convert(pt)
    kwargs = dict(z_dim=64, w_dim=64, c_dim=10, img_resolution=32, img_channels=3,
                  mapping_kwargs={"num_layers": 2},
                  synthesis_kwargs={"channel_base": 2048, "channel_max": 32})
    with pytest.raises(ValueError, match="shape .* check the hyper-parameters"):
        converter.convert(pt, **kwargs)


def test_cli_and_generator_wrapper(fixtures_dir, tmp_path):
    pkl = os.path.join(fixtures_dir, "sg2ada_cond10_res32.pkl")
    out = str(tmp_path / "converted")
    assert converter.main([pkl, out]) == 0
    with Image.open(os.path.join(out, "samples.png")) as im:
        assert im.size == (8 * 32, 10 * 32) and im.mode == "RGB"  # 8 per row, a row per class
    ref = np.load(os.path.join(fixtures_dir, "sg2ada_cond10_res32.npz"))
    want = np.clip(nhwc(ref["img_noise_const"]), -1, 1)
    for source in (out, pkl):
        gen = sg_generator.load(source)
        assert (gen.latent_shape, gen.num_classes, gen.resolution) == ((64,), 10, 32)
        got = jax.jit(gen.sample)(gen.params, ref["z"], jnp.asarray(ref["labels"]))
        np.testing.assert_allclose(got, want, atol=ATOL)
