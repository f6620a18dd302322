"""StyleGAN-XL: fixture outputs of official snapshots, safety of the reader, CLI, gradients.

The fixture tests are parametrised over (snapshot, npz, json) triples found in the fixtures
directory: any `sgxl_*.npz` with a `.pkl` or `.pkl.xz` and a `.json` of the same name is picked
up, so another snapshot of the same layout can be dropped in. Each snapshot is converted and
jitted once (module-scoped); truncation settings come from the `.json`. Tolerance atol 1e-4
(the fixtures README: float32 round-off is ~2e-6, a difference above 1e-4 is a bug).

Malicious pickles are written here by hand (converters.pickle_writer, plus a fragment
written by the standard pickler with STACK_GLOBAL and memo opcodes) around a real G_ema tree.
Behaviour checked: a call hidden inside G_ema is refused by name (UnsafePickleError); the same
calls inside D (which is not converted) are stubbed: recorded, never resolved nor run, and the
conversion succeeds. In both cases the marker file the payload would create never appears, and
the embedded module source (here a payload too) is never run.
"""
import builtins
import collections
import functools
import glob
import json
import os
import pickle
import pickletools
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FIXTURES, ROOT
from PIL import Image

from converters import pickle_writer, torch_pickle, stylegan_xl as converter
from converters.pickle_writer import Global, Instance, Reduce
from mgr_jax import generators
from mgr_jax.generators import stylegan_xl as sgxl_generator
from mgr_jax.models import stylegan_xl, stylegan_xl_ops
from mgr_jax.run import train
from tests.helpers import tiny_config

ATOL = 1e-4


def _cases():
    """(snapshot, npz, json) file names for each sgxl fixture present."""
    cases = []
    for npz in sorted(glob.glob(os.path.join(FIXTURES, "sgxl_*.npz"))):
        stem = npz[:-len(".npz")]
        pkls = [stem + ext for ext in (".pkl", ".pkl.xz") if os.path.exists(stem + ext)]
        if pkls and os.path.exists(stem + ".json"):
            cases.append(tuple(os.path.basename(p) for p in (pkls[0], npz, stem + ".json")))
    # Without the fixtures the known triples still yield (skipped) tests.
    return cases or [(f"{n}.pkl.xz", f"{n}.npz", f"{n}.json")
                     for n in ("sgxl_cond4_res16", "sgxl_superres_cond4_res32")]


CASES = _cases()
STEM = next((c for c in CASES if "superres" not in c[0]), CASES[0])


def _need_fixtures():
    if not os.path.isdir(FIXTURES):
        pytest.skip(f"shared fixtures not found at {FIXTURES}")


def nhwc(a):
    """NCHW fixture array -> NHWC."""
    return np.transpose(a, (0, 2, 3, 1))


def truncation_settings(info):
    """(psi, cutoff) of the fixture's truncated outputs, from its .json."""
    found = {k: info[k] for k in ("truncation_psi", "truncation_cutoff") if k in info}
    text = json.dumps(info.get("expected_outputs", {}).get("ws_truncated", ""))
    if "truncation_psi" not in found:
        found["truncation_psi"] = float(re.search(r"truncation_psi=([0-9.]+)", text).group(1))
    if "truncation_cutoff" not in found:
        match = re.search(r"truncation_cutoff=(None|-?\d+)", text)
        found["truncation_cutoff"] = None if not match or match.group(1) == "None" else int(
            match.group(1))
    cutoff = found["truncation_cutoff"]
    return float(found["truncation_psi"]), None if cutoff is None or cutoff < 0 else cutoff


@functools.lru_cache(maxsize=None)
def _convert(pkl, key="G_ema"):
    return converter.convert(os.path.join(FIXTURES, pkl), key=key)


@functools.lru_cache(maxsize=None)
def _sampler(module, cutoff):
    """(variables, z, c, psi) -> (ws, images), psi traced (one compile per module and cutoff)."""
    mapping = jax.jit(lambda v, z, c, psi: module.apply(
        v, z, c, truncation_psi=psi, truncation_cutoff=cutoff, method="mapping"))
    images = jax.jit(lambda v, z, c, psi: module.apply(
        v, z, c, truncation_psi=psi, truncation_cutoff=cutoff, noise_mode="const"))
    return lambda v, z, c, psi: (mapping(v, z, c, psi), images(v, z, c, psi))


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c[0])
def fixture_run(request):
    """One fixture case converted and run: module, variables, npz, json, outputs."""
    _need_fixtures()
    pkl, npz, info = request.param
    module, variables = _convert(pkl)
    ref = dict(np.load(os.path.join(FIXTURES, npz)))
    with open(os.path.join(FIXTURES, info)) as f:
        info = json.load(f)
    psi, cutoff = truncation_settings(info)
    run = _sampler(module, cutoff)
    out = {}
    out["ws"], out["img"] = run(variables, ref["z"], ref["c"], jnp.float32(1.0))
    out["ws_truncated"], out["img_truncated"] = run(variables, ref["z"], ref["c"],
                                                    jnp.float32(psi))
    return dict(pkl=pkl, module=module, variables=variables, ref=ref, info=info, out=out,
                run=run, psi=psi)


@pytest.mark.parametrize("name", ["ws", "ws_truncated"])
def test_fixture_mapping(fixture_run, name):
    got, ref = fixture_run["out"][name], fixture_run["ref"][name]
    assert got.shape == ref.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=ATOL)


def test_fixture_truncation_cutoff_truncates_the_first_ws_only(fixture_run):
    module, variables, ref = (fixture_run[k] for k in ("module", "variables", "ref"))
    cutoff = 3
    ws = np.asarray(jax.jit(lambda v, z, c: module.apply(
        v, z, c, truncation_psi=fixture_run["psi"], truncation_cutoff=cutoff,
        method="mapping"))(variables, ref["z"], ref["c"]))
    np.testing.assert_allclose(ws[:, :cutoff], ref["ws_truncated"][:, :cutoff], atol=ATOL)
    np.testing.assert_allclose(ws[:, cutoff:], ref["ws"][:, cutoff:], atol=ATOL)


@pytest.mark.parametrize("name", ["img", "img_truncated"])
def test_fixture_images(fixture_run, name):
    got, ref = fixture_run["out"][name], nhwc(fixture_run["ref"][name])
    assert got.shape == ref.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=ATOL)
    assert float(np.std(ref)) > 0.1  # the comparison can fail: images vary


def test_fixture_reads_G_ema_not_G(fixture_run):  # noqa: N802
    ref = fixture_run["ref"]
    from_g = nhwc(ref["img_from_G_key"])
    assert np.max(np.abs(np.asarray(fixture_run["out"]["img"]) - from_g)) > 1e-2
    module_g, variables_g = _convert(fixture_run["pkl"], key="G")
    assert module_g == fixture_run["module"]  # same layout: the same compiled sampler
    _, img_g = fixture_run["run"](variables_g, ref["z"], ref["c"], jnp.float32(1.0))
    np.testing.assert_allclose(img_g, from_g, rtol=0, atol=ATOL)


def test_fixture_layout_from_live_attributes(fixture_run):
    module, info = fixture_run["module"], fixture_run["info"]
    arch = info["architecture"]
    names = arch.get("layer_names") or arch["synthesis"]["layer_names"]
    assert [spec.name for spec in module.layers] == names
    assert module.num_ws == arch["num_ws"] == fixture_run["ref"]["ws"].shape[1]
    assert module.img_resolution == fixture_run["ref"]["img"].shape[-1]


# ---------------------------------------------------------------------------------------------
# stylegan3-r pieces (not in the fixtures): radial down filters, 1x1 kernels


def test_radial_filter_equals_separable_when_outer_product():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 9, 11, 3)), jnp.float32)
    fu, fd = (jnp.asarray(rng.standard_normal(n), jnp.float32) for n in (8, 12))
    lrelu = functools.partial(stylegan_xl_ops.filtered_lrelu, b=jnp.asarray(
        rng.standard_normal(3), jnp.float32), up=2, down=2, padding=(5, 4, 6, 3), clamp=0.8)
    sep, radial = jax.jit(lambda x: (lrelu(x, fu, fd), lrelu(x, fu, jnp.outer(fd, fd))))(x)
    # H: (9 * 2 + 6 + 3 - 7 - 11 + 1) // 2, W: (11 * 2 + 5 + 4 - 7 - 11 + 1) // 2
    assert sep.shape == (2, 5, 7, 3)
    np.testing.assert_allclose(radial, sep, atol=1e-5)
    clamped = lrelu(x * 10, fu, None, down=1)  # no down filter: the clamp is the output
    assert float(jnp.max(jnp.abs(clamped))) == pytest.approx(0.8)


def _tiny_r(radial):
    """A tiny stylegan3-r-like G: 1x1 kernels, one radial (or separable) downsampling layer."""
    specs = (stylegan_xl.LayerSpec("L0_12_8", 8, 8, False, 1, 2, 2, (11, 10, 11, 10), 12, 12,
                                   radial),
             stylegan_xl.LayerSpec("L1_8_8", 8, 8, False, 1, 2, 2, (7, 6, 7, 6), 12, 12),
             stylegan_xl.LayerSpec("L2_8_3", 8, 3, True, 1, 1, 1, (0, 0, 0, 0), 1, 1))
    return stylegan_xl.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3,
                                 input_spec=stylegan_xl.InputSpec(8, (12, 12), 8.0, 2.0),
                                 layers=specs, mapping_layers=1)


def test_stylegan3_r_layout_runs_and_radial_path_is_wired():
    sep, radial = _tiny_r(False), _tiny_r(True)
    variables = stylegan_xl.random_variables(sep, 0)
    radial_vars = stylegan_xl.random_variables(radial, 0)
    taps = variables["buffers"]["synthesis"]["L0_12_8"]["down_filter"]
    np.testing.assert_allclose(radial_vars["buffers"]["synthesis"]["L0_12_8"]["down_filter"],
                               np.outer(taps, taps), atol=1e-7)  # the same filter, as 2-D

    @jax.jit
    def run(variables, radial_vars, z):
        return (sep.apply(variables, z, None), radial.apply(radial_vars, z, None),
                sep.apply(variables, z, None, method="mapping"))

    img, img_radial, ws = run(variables, radial_vars, jax.random.normal(jax.random.key(2),
                                                                        (2, 8)))
    assert img.shape == (2, 8, 8, 3) and np.all(np.isfinite(img)) and float(jnp.std(img)) > 0
    assert ws.shape == (2, sep.num_ws, 8)
    np.testing.assert_allclose(img_radial, img, atol=1e-5)


def _direct_upfir(x, f, up, pad0, pad1):
    """numpy: zero-stuff (each sample then up - 1 zeros), pad / crop, true convolution * up."""
    stuffed = np.zeros((x.shape[0], x.shape[1] * up) + x.shape[2:])
    stuffed[:, ::up] = x
    padded = np.pad(stuffed, ((0, 0), (max(pad0, 0), max(pad1, 0)), (0, 0)))
    padded = padded[:, max(-pad0, 0):padded.shape[1] - max(-pad1, 0)]
    return np.stack([np.tensordot(padded[:, t:t + len(f)], f[::-1] * up, axes=([1], [0]))
                     for t in range(padded.shape[1] - len(f) + 1)], axis=1)


@pytest.mark.parametrize("n,up,pad0,pad1,taps", [(36, 4, -6, -9, 24), (9, 3, -3, 7, 5)])
def test_fir_ops_match_direct_upfirdn_and_their_vjps_match_autodiff(n, up, pad0, pad1, taps):
    rng = np.random.default_rng(n)
    x = jnp.asarray(rng.standard_normal((2, n, 3)), jnp.float32)
    f = jnp.asarray(rng.standard_normal(taps), jnp.float32)
    ops = stylegan_xl_ops
    pairs = {"up": (functools.partial(ops.upfir_axis, up=up, pad0=pad0, pad1=pad1,
                                      gain=float(up), axis=1),
                    functools.partial(ops._upfir, up=up, pad0=pad0, pad1=pad1, gain=float(up),
                                      axis=1)),
             "down": (functools.partial(ops.firdown_axis, down=up, axis=1),
                      functools.partial(ops._firdown, down=up, axis=1))}

    def derivatives(op, plain, x, w):
        """op(x), grad of <op(x), w> by op's VJP and by autodiff of plain, and the tangent at
        2 of s -> grad_x <op(x), w s> (forward-over-reverse, as the exact hypergradient)."""
        grad_at = jax.grad(lambda x, s: jnp.sum(op(x, f) * w * s))
        return (op(x, f), jax.grad(lambda x: jnp.sum(op(x, f) * w))(x),
                jax.grad(lambda x: jnp.sum(plain(x, f) * w))(x),
                jax.linearize(lambda s: grad_at(x, s), 1.0)[1](2.0))

    @jax.jit
    def run(x, w_up, w_down):
        return {name: derivatives(*pairs[name], x, w)
                for name, w in (("up", w_up), ("down", w_down))}

    sizes = {"up": n * up + pad0 + pad1 - taps + 1, "down": -(-(n - taps + 1) // up)}
    w = {k: jnp.asarray(rng.standard_normal((2, s, 3)), jnp.float32) for k, s in sizes.items()}
    out = run(x, w["up"], w["down"])
    want = _direct_upfir(np.asarray(x, np.float64), np.asarray(f, np.float64), up, pad0, pad1)
    np.testing.assert_allclose(out["up"][0], want, atol=1e-5 * np.abs(want).max())
    for _, custom, auto, tangent in out.values():
        scale = float(np.abs(auto).max())
        np.testing.assert_allclose(custom, auto, atol=1e-5 * scale)
        np.testing.assert_allclose(tangent, 2 * np.asarray(auto), atol=1e-5 * scale)


# ---------------------------------------------------------------------------------------------
# Malicious pickles


class _Call:
    """Pickled by the standard pickler as func(*args) (STACK_GLOBAL + REDUCE); never called."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payload(marker):
    """Pickle opcodes (no PROTO / FRAME / STOP) of calls that would create `marker`."""
    data = pickle.dumps([_Call(os.system, f"touch {marker}"),
                         _Call(builtins.exec, f"open({str(marker)!r}, 'w').close()")],
                        protocol=4)
    ops = list(pickletools.genops(data))
    ends = [pos for _, _, pos in ops[1:]] + [len(data)]
    return b"".join(data[pos:end] for (op, _, pos), end in zip(ops, ends, strict=True)
                    if op.name not in ("PROTO", "FRAME", "STOP"))


def _writable(obj, source):
    """A read tree -> pickle_writer objects (persistent objects carry `source` as module_src)."""
    if isinstance(obj, converter._PersistentObject):
        meta = {"type": "class", "version": 6, "module_src": source,
                "class_name": obj.class_name, "state": _writable(obj.state, source)}
        return Reduce(Global("torch_utils.persistence", "_reconstruct_persistent_obj"), (meta,))
    if isinstance(obj, torch_pickle.RecordedObject):
        module, _, name = obj.name.rpartition(".")
        return Instance(Global(module, name), _writable(obj.state, source))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return Reduce(Global("builtins", "set"), (sorted(obj),))
    if isinstance(obj, dict):
        items = [(k, _writable(v, source)) for k, v in obj.items()]
        return collections.OrderedDict(items) if isinstance(obj, collections.OrderedDict) \
            else dict(items)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_writable(v, source) for v in obj)
    return obj


PLACEHOLDER = "__payload_goes_here__"


def _snapshot(tmp_path, marker, where):
    """A snapshot .pkl: the stem fixture's G_ema rewritten, the payload in G_ema or in D."""
    net = converter.read_snapshot(os.path.join(FIXTURES, STEM[0]))
    evil_src = f"open({str(marker)!r}, 'w').close()\n"  # the embedded source is never run
    g_ema = _writable(net, evil_src)
    if where == "G_ema":
        mapping_state = g_ema.args[0]["state"]["_modules"]["mapping"].args[0]["state"]
        mapping_state["extra"] = PLACEHOLDER
    disc = Instance(Global("pg_modules.discriminator", "ProjectedDiscriminator"), {
        "_modules": collections.OrderedDict(feature_network=Instance(
            Global("timm.models.efficientnet", "EfficientNet"),
            {"act": Instance(Global("torch.nn.modules.activation", "SiLU"), {}),
             "w": np.ones((2, 2), np.float32)})),
        "payload": PLACEHOLDER if where == "D" else None})
    data = pickle_writer.dumps_plain({"G": None, "D": disc, "G_ema": g_ema,
                                     "augment_pipe": None, "progress": {"cur_nimg": 0}})
    placeholder = pickle_writer.dumps_plain(PLACEHOLDER)[2:-1]
    assert data.count(placeholder) == 1
    path = tmp_path / f"evil_in_{where}.pkl"
    path.write_bytes(data.replace(placeholder, _payload(marker)))
    return path


def test_payload_in_D_is_stubbed_and_never_run(tmp_path):  # noqa: N802
    _need_fixtures()
    marker = tmp_path / "pwned"
    path = _snapshot(tmp_path, marker, "D")
    module, variables = converter.convert(path)
    assert not marker.exists()
    want_module, want = _convert(STEM[0])
    assert module == want_module
    jax.tree.map(np.testing.assert_array_equal, variables, want)
    raw = torch_pickle.load(path, extra_globals=converter._own_globals(), stub_unknown=True)
    payload = raw["D"].state["payload"]  # the calls were recorded, with their arguments
    assert [p.name for p in payload] == [f"{os.system.__module__}.system", "builtins.exec"]
    assert payload[0].args == (f"touch {marker}",)
    assert not marker.exists()


def test_payload_in_G_ema_is_refused_by_name(tmp_path):  # noqa: N802
    _need_fixtures()
    marker = tmp_path / "pwned"
    path = _snapshot(tmp_path, marker, "G_ema")
    with pytest.raises(torch_pickle.UnsafePickleError,
                       match=rf"refusing to load ({os.system.__module__}\.system|builtins\.exec)"):
        converter.convert(path)
    assert not marker.exists()


def test_G_ema_itself_a_call_is_refused(tmp_path):  # noqa: N802
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle_writer.dumps_plain(
        {"G_ema": Reduce(Global("subprocess", "call"), (["touch", str(marker)],)), "D": None}))
    with pytest.raises(torch_pickle.UnsafePickleError, match=r"subprocess\.call"):
        converter.convert(path)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# CLI and the Generator wrapper


def test_cli_refuses_existing_out_dir_with_one_line(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("user data")
    for flags in ([], ["--overwrite"]):  # exists; --overwrite, but not a converted directory
        assert converter.main([os.path.join(FIXTURES, STEM[0]), str(out), *flags]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
        assert ("not a converted" if flags else "exists") in captured.err
        assert "Traceback" not in captured.err
    assert sorted(os.listdir(out)) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "user data"
    assert sorted(os.listdir(tmp_path)) == ["mine"]  # nothing half-written beside it
    (tmp_path / "afile").write_text("x")  # a file is refused too, even with --overwrite
    assert converter.main([os.path.join(FIXTURES, STEM[0]), str(tmp_path / "afile"),
                           "--overwrite"]) == 2
    assert (tmp_path / "afile").read_text() == "x"


def test_cli_module_entry_point_exits_2_without_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "converters.stylegan_xl",
                           str(tmp_path / "missing.pkl"), str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "not found" in done.stderr
    assert not (tmp_path / "out").exists()


def test_cli_writes_variables_and_grid_and_roundtrips(tmp_path, capsys):
    _need_fixtures()
    snapshot = os.path.join(FIXTURES, STEM[0])
    out = tmp_path / "converted"
    ref = np.load(os.path.join(FIXTURES, STEM[1]))
    cols = ref["z"].shape[0]  # the fixtures' batch: the grid reuses their compiled sampler
    assert converter.main([snapshot, str(out), "--cols", str(cols)]) == 0
    assert sorted(os.listdir(out)) == ["meta.json", "samples.png", "variables"]
    with open(out / "meta.json") as f:
        assert json.load(f)["kind"] == "stylegan_xl"
    module, variables = _convert(STEM[0])
    with Image.open(out / "samples.png") as im:
        res = module.img_resolution
        assert im.size == (cols * res, min(module.c_dim, 16) * res) and im.mode == "RGB"
        assert np.asarray(im).std() > 5  # an image, not a constant
    loaded_module, loaded = converter.load_converted(out)
    assert loaded_module == module
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)
    _, img = _sampler(loaded_module, None)(loaded, ref["z"], ref["c"], jnp.float32(1.0))
    np.testing.assert_allclose(img, nhwc(ref["img"]), rtol=0, atol=ATOL)

    capsys.readouterr()
    assert converter.main([snapshot, str(out)]) == 2  # exists: refused without --overwrite
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "exists" in err
    assert converter.main([snapshot, str(out), "--overwrite", "--seed", "1", "--cols",
                           str(cols)]) == 0
    assert sorted(os.listdir(out)) == ["meta.json", "samples.png", "variables"]
    assert sorted(os.listdir(tmp_path)) == ["converted"]


def test_cli_bad_snapshot_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle_writer.dumps_plain({"G_ema": {"not": "a generator"}}))
    assert converter.main([str(bad), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not a StyleGAN-XL" in err
    assert not (tmp_path / "out").exists()


def test_generator_wrapper_samples_and_is_differentiable_in_z(tmp_path):
    """The Generator from the snapshot and from a converted directory: same parameters; its
    jitted sample reproduces the truncated fixture images, and its gradient w.r.t. z (what MPS
    backpropagates) is finite and matches a central finite difference on one coordinate."""
    _need_fixtures()
    module, variables = _convert(STEM[0])
    converter.save_converted(tmp_path / "conv", module, variables, "test")
    ref = np.load(os.path.join(FIXTURES, STEM[1]))
    with open(os.path.join(FIXTURES, STEM[2])) as f:
        psi, cutoff = truncation_settings(json.load(f))
    gens = [sgxl_generator.load(source, truncation_psi=psi, truncation_cutoff=cutoff)
            for source in (os.path.join(FIXTURES, STEM[0]), str(tmp_path / "conv"))]
    for gen in gens:
        assert gen.kind == "stylegan_xl" and gen.num_classes == module.c_dim
        assert gen.latent_shape == (module.z_dim,) and gen.resolution == module.img_resolution
        jax.tree.map(np.testing.assert_array_equal, gen.params, variables)
    gen = gens[1]  # both: the same sampler and parameters
    z0 = jnp.asarray(ref["z"])
    labels = jnp.asarray(np.argmax(ref["c"], axis=1))
    proj = jax.random.normal(jax.random.key(3), (z0.shape[0], gen.resolution, gen.resolution,
                                                 module.img_channels))

    def loss(z):
        img = gen.sample(gen.params, z, labels)
        return jnp.sum(img * proj), img

    value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (_, img), grad = value_and_grad(z0)
    np.testing.assert_allclose(img, np.clip(nhwc(ref["img_truncated"]), -1, 1), rtol=0,
                               atol=ATOL)
    grad = np.asarray(grad)
    assert grad.shape == z0.shape and np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
    i, j = np.unravel_index(np.argmax(np.abs(grad)), grad.shape)
    eps = 1e-2
    step = jnp.zeros_like(z0).at[i, j].set(eps)
    plus, minus = (float(value_and_grad(z0 + s)[0][0]) for s in (step, -step))
    np.testing.assert_allclose((plus - minus) / (2 * eps), grad[i, j], rtol=2e-2)
    with pytest.raises(ValueError, match="noise_mode"):
        sgxl_generator.from_module(module, variables, noise_mode="bogus")


# ---------------------------------------------------------------------------------------------
# The main job with the original snapshot file


def _image_folder(root, num_classes, per_class=16, size=12):
    rng = np.random.default_rng(0)
    for c in range(num_classes):
        os.makedirs(os.path.join(root, f"class_{c}"))
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            pixels[..., c % 3] = 40 + 50 * c  # something to learn
            Image.fromarray(pixels).save(os.path.join(root, f"class_{c}", f"{i:02d}.png"))


# Slow: the main job with a generator kind is covered quickly by test_generator_kinds
# (stylegan2_ada), and what differs for StyleGAN-XL (its loading, samples against the fixture,
# the derivative in z) by the tests above.
@pytest.mark.slow
def test_main_job_trains_mgr_with_the_original_snapshot(tmp_path):
    _need_fixtures()
    assert "stylegan_xl" in generators.KINDS
    module, variables = _convert(STEM[0])
    data = str(tmp_path / "data")
    _image_folder(data, module.c_dim)
    config = tiny_config(method="mgr", num_epochs=1, log_every_steps=1, batch_size=16, **{
        "data.name": "imagefolder", "data.manual_dir": data, "data.subset_fraction": 1.0,
        "data.num_workers": 0, "model.arch": "resnet10", "augment.num_ops": 1,
        "mps.kl_weight": 0.0, "generator.kind": "stylegan_xl",
        "generator.checkpoint": os.path.join(FIXTURES, STEM[0])})
    workdir = str(tmp_path / "run")
    results = train.train_and_evaluate(config, workdir)
    assert results["best_epoch"] == 1
    with open(os.path.join(workdir, "results.json")) as f:
        saved = json.load(f)
    assert saved["method"] == "mgr" and np.isfinite(saved["test_top1"])
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        steps = [r for r in map(json.loads, f) if r["kind"] == "train"]
    assert len(steps) >= 2
    for r in steps:
        assert all(np.isfinite(r[k]) for k in ("loss", "ce", "syn", "meta_loss"))
        assert r["syn"] > 0 and r["hypergrad_norm"] > 0  # images matter, G passes gradient
    method = train.setup(config).method
    frozen = method.frozen["generator"]  # what the step is given: the snapshot's G_ema
    jax.tree.map(np.testing.assert_array_equal, frozen, variables)
