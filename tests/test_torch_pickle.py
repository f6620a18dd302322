"""converters.torch_pickle: torch-free, allow-listed reading of PyTorch files (no torch here).

Checkpoints are written by the module's own writer or assembled from raw pickle opcodes and zip
records in torch's layout; the real fixtures (written by PyTorch) check the reader against torch.
"""
import collections
import lzma
import os
import zipfile

import numpy as np
import pytest

from converters import pickle_writer
from converters import torch_pickle as tp
from converters.pickle_writer import Global, PersistentId, Reduce, Storage, TensorView

HOOKS = Reduce(Global("collections", "OrderedDict"), ())


def _sample_state():
    """A small state dict with several dtypes, a 0-d and an empty tensor, nested containers."""
    r = np.random.default_rng(0)
    return collections.OrderedDict([
        ("w", r.normal(size=(4, 3, 2, 2)).astype(np.float32)),
        ("d", r.normal(size=(5,)).astype(np.float64)),
        ("h", r.normal(size=(2, 3)).astype(np.float16)),
        ("steps", np.array(7, np.int64)),
        ("i32", np.arange(-3, 3, dtype=np.int32)),
        ("u8", np.arange(250, 256, dtype=np.uint8)),
        ("i8", np.arange(-4, 4, dtype=np.int8)),
        ("mask", np.array([True, False, True])),
        ("empty", np.zeros((0, 3), np.float32)),
        ("meta", {"epoch": 3, "lr": 0.5, "name": "net", "big": 2 ** 40, "neg": -5,
                  "flags": [True, None], "shape": (1, 2, 3, 4)}),
    ])


def _check_sample(got, want):
    assert isinstance(got, collections.OrderedDict) and list(got) == list(want)
    for k, v in want.items():
        if isinstance(v, np.ndarray):
            assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
            np.testing.assert_array_equal(got[k], v)
        else:
            assert got[k] == v


def _views():
    """Shared storage: a transposed view with an offset and a full view of one base."""
    base = np.arange(30, dtype=np.float32)
    obj = {"t": TensorView(base, 2, (3, 4), (1, 3)), "all": TensorView(base, 0, (30,), (1,)),
           "bcast": TensorView(base, 5, (2, 3), (0, 1))}
    want = {"t": np.array([[base[2 + i + 3 * j] for j in range(4)] for i in range(3)]),
            "all": base, "bcast": np.stack([base[5:8], base[5:8]])}
    return obj, want


def _check_views(got, want):
    for k, v in want.items():
        np.testing.assert_array_equal(got[k], v)
        assert got[k].flags.c_contiguous and got[k].flags.owndata, k
    got["t"][0, 0] = -1.0  # copies: writing one must not change another
    assert got["all"][2] == 2.0


def _zip(path, pkl, records, prefix="archive", byteorder=b"little"):
    """Zip a data.pkl and raw storage records in torch's layout."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{prefix}/data.pkl", pkl)
        zf.writestr(f"{prefix}/byteorder", byteorder)
        for key, raw in records.items():
            zf.writestr(f"{prefix}/data/{key}", raw)
        zf.writestr(f"{prefix}/version", "3\n")


# --- round trips ----------------------------------------------------------------------------


def test_zip_round_trip(tmp_path):
    want = _sample_state()
    path = tmp_path / "sd.pth"
    pickle_writer.save(path, want)
    assert zipfile.is_zipfile(path)
    _check_sample(tp.load(path), want)


def test_legacy_round_trip(tmp_path):
    want = _sample_state()
    path = tmp_path / "legacy.pth"
    pickle_writer.save(path, want, legacy=True)
    assert not zipfile.is_zipfile(path)
    _check_sample(tp.load(path), want)
    _check_sample(tp.loads_legacy_bytes(path.read_bytes()), want)


@pytest.mark.parametrize("legacy", [False, True])
def test_strides_offsets_shared_storage(tmp_path, legacy):
    obj, want = _views()
    path = tmp_path / "views.pth"
    pickle_writer.save(path, obj, legacy=legacy)
    _check_views(tp.load(path), want)


def test_plain_pickle_with_load_from_bytes(tmp_path):
    """StyleGAN-style: tensors and Parameters over _load_from_bytes(legacy bytes), protocol 4."""
    base = np.arange(12, dtype=np.float32)
    param = Reduce(Global("torch._utils", "_rebuild_parameter"),
                   (TensorView(base, 1, (2, 3), (1, 4)), False, HOOKS))
    obj = {"w": param, "b": np.ones(3, np.float32), "raw": b"\x00\x01", "bare": Storage(base)}
    path = tmp_path / "snap.pkl"
    path.write_bytes(pickle_writer.dumps_plain(obj))
    got = tp.load(path)
    np.testing.assert_array_equal(got["w"], [[1, 5, 9], [2, 6, 10]])
    np.testing.assert_array_equal(got["b"], np.ones(3))
    np.testing.assert_array_equal(got["bare"], base)  # a bare storage is a 1-D array
    assert got["raw"] == b"\x00\x01"


def test_instance_is_newobj_then_build(tmp_path):
    """A ModuleDict-like object: recorded with its state by an allow-listed stand-in, refused
    by name without one."""
    name = "torch.nn.modules.container.ModuleDict"
    inner = {"_parameters": {"weight": np.eye(2, dtype=np.float32)}, "_modules": {}}
    obj = {"enc": pickle_writer.Instance(Global(*name.rsplit(".", 1)), {"training": False,
                                                             "_modules": {"conv": inner}})}
    path = tmp_path / "modules.pkl"
    path.write_bytes(pickle_writer.dumps_plain(obj))
    with pytest.raises(tp.UnsafePickleError, match="ModuleDict"):
        tp.load(path)
    got = tp.load(path, extra_globals=tp.record_globals(name))["enc"]
    assert got.name == name and got.args == () and got.state["training"] is False
    np.testing.assert_array_equal(got.state["_modules"]["conv"]["_parameters"]["weight"],
                                  np.eye(2))


def test_xz_input(tmp_path):
    want = _sample_state()
    path = tmp_path / "sd.pth"
    pickle_writer.save(path, want)
    xz = tmp_path / "sd.pth.xz"
    xz.write_bytes(lzma.compress(path.read_bytes()))
    _check_sample(tp.load(xz), want)


def test_big_endian_and_bfloat16_untyped(tmp_path):
    vals = np.array([1.5, -2.0, 3.25], np.float32)
    bf16 = (vals.view(np.uint32) >> 16).astype("<u2").tobytes()  # exact in bfloat16
    w = pickle_writer._Writer(2, "zip")
    obj = {
        "be": Reduce(Global("torch._utils", "_rebuild_tensor_v2"), (PersistentId(
            ("storage", Global("torch", "DoubleStorage"), "0", "cpu", 2)), 0, (2,), (1,),
            False, HOOKS)),
        "bf": Reduce(Global("torch._utils", "_rebuild_tensor_v3"), (PersistentId(
            ("storage", Global("torch", "UntypedStorage"), "1", "cuda:0", 6)), 0, (3,), (1,),
            False, HOOKS, Global("torch", "bfloat16"))),
        "half_bf": Reduce(Global("torch._utils", "_rebuild_tensor_v2"), (PersistentId(
            ("storage", Global("torch.cuda", "BFloat16Storage"), "1", "cuda:0", 3)), 1, (2,),
            (1,), False, HOOKS)),
    }
    path = tmp_path / "be.pt"
    _zip(path, w.dumps(obj), {"0": np.array([0.5, 7.0], ">f8").tobytes(), "1": bf16},
         byteorder=b"big")
    got = tp.load(path)
    assert got["be"].dtype == np.float64 and got["be"].dtype.isnative
    np.testing.assert_array_equal(got["be"], [0.5, 7.0])
    path2 = tmp_path / "bf.pt"
    _zip(path2, w.dumps(obj), {"0": np.array([0.5, 7.0], "<f8").tobytes(), "1": bf16})
    got = tp.load(path2)
    assert got["bf"].dtype == np.float32
    np.testing.assert_array_equal(got["bf"], vals)
    np.testing.assert_array_equal(got["half_bf"], vals[1:])


def test_record_object_and_extra_globals(tmp_path):
    w = pickle_writer._Writer(2, "zip")
    obj = {"mod": Reduce(Global("my.pkg", "Thing"), (1, "x")),
           "cfg": Reduce(Global("dnnlib.util", "EasyDict"), ())}
    path = tmp_path / "rec.pt"
    _zip(path, w.dumps(obj), {})
    with pytest.raises(tp.UnsafePickleError, match="my.pkg.Thing"):
        tp.load(path)
    got = tp.load(path, extra_globals={**tp.record_globals("my.pkg.Thing"),
                                       "dnnlib.util.EasyDict": dict})
    assert isinstance(got["mod"], tp.RecordedObject)
    assert got["mod"].name == "my.pkg.Thing" and got["mod"].args == (1, "x")
    assert got["cfg"] == {}


# --- refusing unsafe pickles ------------------------------------------------------------------


def _system_call(marker):
    return Reduce(Global("os", "system"), (f"touch {marker}",))


@pytest.mark.parametrize("fmt", ["zip", "legacy", "plain", "nested_bytes"])
def test_os_system_refused_without_side_effect(tmp_path, fmt):
    marker = tmp_path / "pwned"
    evil = {"x": _system_call(marker)}
    path = tmp_path / f"evil_{fmt}.pth"
    if fmt == "zip":
        _zip(path, pickle_writer._Writer(2, "zip").dumps(evil), {})
    elif fmt == "legacy":
        path.write_bytes(pickle_writer.dumps_legacy(evil))
    elif fmt == "plain":
        path.write_bytes(pickle_writer.dumps_plain(evil))
    else:  # the call hides inside the legacy bytes of a _load_from_bytes storage
        inner = pickle_writer.dumps_legacy(evil)
        path.write_bytes(pickle_writer.dumps_plain(
            {"s": Reduce(Global("torch.storage", "_load_from_bytes"), (inner,))}))
    with pytest.raises(tp.UnsafePickleError, match=r"refusing to load os\.system"):
        tp.load(path)
    assert not marker.exists()


def test_stack_global_and_posix_and_eval_refused(tmp_path):
    marker = tmp_path / "pwned"
    cmd = f"touch {marker}".encode()

    def short(s):
        return b"\x8c" + bytes([len(s)]) + s

    # Protocol 4, the module and name given as strings on the stack (STACK_GLOBAL).
    stack = b"\x80\x04" + short(b"posix") + short(b"system") + b"\x93" + short(cmd) + b"\x85R."
    (tmp_path / "stack.pkl").write_bytes(stack)
    with pytest.raises(tp.UnsafePickleError, match=r"posix\.system"):
        tp.load(tmp_path / "stack.pkl")
    ev = pickle_writer.dumps_plain(Reduce(Global("builtins", "eval"), (f"open('{marker}', 'w')",)))
    (tmp_path / "eval.pkl").write_bytes(ev)
    with pytest.raises(tp.UnsafePickleError, match=r"builtins\.eval"):
        tp.load(tmp_path / "eval.pkl")
    py2_eval = Reduce(Global("__builtin__", "eval"), ("1",))  # Python 2's module name
    with pytest.raises(tp.UnsafePickleError, match=r"builtins\.eval"):
        tp.loads_legacy_bytes(pickle_writer.dumps_legacy({"x": py2_eval}))
    py2 = pickle_writer.dumps_plain(py2_eval)
    (tmp_path / "py2.pkl").write_bytes(py2)
    with pytest.raises(tp.UnsafePickleError, match=r"builtins\.eval"):
        tp.load(tmp_path / "py2.pkl")
    assert not marker.exists()


# --- damaged files ------------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated(tmp_path, legacy, keep):
    path = tmp_path / "full.pth"
    pickle_writer.save(path, _sample_state(), legacy=legacy)
    data = path.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(tp.CheckpointFormatError, match="cut.pth") as e:
        tp.load(cut)
    assert "\n" not in str(e.value)


def test_truncated_inside_legacy_pickle(tmp_path):
    data = pickle_writer.dumps_legacy(_sample_state())
    with pytest.raises(tp.CheckpointFormatError, match="legacy bytes"):
        tp.loads_legacy_bytes(data[:60])


def test_random_empty_missing(tmp_path):
    rnd = tmp_path / "random.bin"
    rnd.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    with pytest.raises(tp.CheckpointFormatError, match="random.bin.*not a PyTorch"):
        tp.load(rnd)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(tp.CheckpointFormatError, match="empty file"):
        tp.load(tmp_path / "empty.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        tp.load(tmp_path / "nope.pth")
    with pytest.raises(tp.CheckpointFormatError, match="directory"):
        tp.load(tmp_path)
    with pytest.raises(tp.CheckpointFormatError, match="legacy bytes"):
        tp.loads_legacy_bytes(b"\x80\x02K\x01.")


def test_missing_storage_record_and_bad_view(tmp_path):
    w = pickle_writer._Writer(2, "zip")
    pid = PersistentId(("storage", Global("torch", "FloatStorage"), "0", "cpu", 4))
    t = Reduce(Global("torch._utils", "_rebuild_tensor_v2"), (pid, 0, (4,), (1,), False, HOOKS))
    _zip(tmp_path / "missing.pth", w.dumps({"t": t}), {})
    with pytest.raises(tp.CheckpointFormatError, match="archive/data/0 is missing"):
        tp.load(tmp_path / "missing.pth")
    _zip(tmp_path / "short.pth", w.dumps({"t": t}), {"0": b"\x00" * 8})
    with pytest.raises(tp.CheckpointFormatError, match="truncated"):
        tp.load(tmp_path / "short.pth")
    past = Reduce(Global("torch._utils", "_rebuild_tensor_v2"), (pid, 2, (4,), (1,), False, HOOKS))
    _zip(tmp_path / "past.pth", w.dumps({"t": past}), {"0": b"\x00" * 16})
    with pytest.raises(tp.CheckpointFormatError, match="past its storage"):
        tp.load(tmp_path / "past.pth")
    with zipfile.ZipFile(tmp_path / "nopkl.pth", "w") as zf:
        zf.writestr("archive/version", "3\n")
    with pytest.raises(tp.CheckpointFormatError, match="without data.pkl"):
        tp.load(tmp_path / "nopkl.pth")


# --- real files written by PyTorch ------------------------------------------------------------


def test_fixture_state_dicts(fixtures_dir):
    sg = tp.load(os.path.join(fixtures_dir, "sg2ada_cond10_res32.G_ema.pt"))
    assert len(sg) == 77 and sg["synthesis.b4.const"].shape == (64, 4, 4)
    assert all(v.dtype == np.float32 for v in sg.values())
    bg = tp.load(os.path.join(fixtures_dir, "biggan_cond10_res32.G_ema.pth"))
    assert len(bg) == 110 and bg["shared.weight"].shape == (10, 16)
    assert bg["linear.weight"].shape == (1024, 8)


def test_fixture_resnet_xz(fixtures_dir, tmp_path):
    with lzma.open(os.path.join(fixtures_dir, "tv_resnet18_c10_hw64.pth.xz")) as f:
        (tmp_path / "r18.pth").write_bytes(f.read())
    sd = tp.load(tmp_path / "r18.pth")
    assert len(sd) == 122 and sum(k.endswith("num_batches_tracked") for k in sd) == 20
    assert sd["conv1.weight"].shape == (64, 3, 7, 7) and sd["fc.weight"].shape == (10, 512)
    assert sd["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    nbt = sd["bn1.num_batches_tracked"]
    assert nbt.dtype == np.int64 and nbt.shape == ()
    assert {v.dtype for k, v in sd.items() if "num_batches" not in k} == {np.dtype(np.float32)}


def test_fixture_stylegan_snapshot(fixtures_dir):
    extra = {"torch_utils.persistence._reconstruct_persistent_obj": lambda meta: meta,
             "dnnlib.util.EasyDict": dict}
    path = os.path.join(fixtures_dir, "sg2ada_cond10_res32.pkl")
    with pytest.raises(tp.UnsafePickleError, match="refusing to load"):
        tp.load(path)
    snap = tp.load(path, extra_globals=extra)
    assert {"G", "D", "G_ema", "augment_pipe", "training_set_kwargs"} <= set(snap)
    mapping = snap["G_ema"]["state"]["_modules"]["mapping"]["state"]["_modules"]
    fc0 = mapping["fc0"]["state"]["_parameters"]
    assert fc0["weight"].shape == (64, 128) and fc0["weight"].dtype == np.float32
    sd = tp.load(os.path.join(fixtures_dir, "sg2ada_cond10_res32.G_ema.pt"))
    np.testing.assert_array_equal(fc0["weight"], sd["mapping.fc0.weight"])


def test_fixture_edm_module_dict(fixtures_dir):
    names = ("torch_utils.persistence._reconstruct_persistent_obj",
             "torch.nn.modules.container.ModuleDict")
    snap = tp.load(os.path.join(fixtures_dir, "edm_songunet_cond10_res16.pkl"),
                   extra_globals=tp.record_globals(*names))
    ema = snap["ema"]
    assert ema.name == names[0] and ema.args[0]["class_name"].endswith("EDMPrecond")
    model = ema.args[0]["state"]["_modules"]["model"].args[0]["state"]
    enc = model["_modules"]["enc"]
    assert enc.name == names[1] and isinstance(enc.state["_modules"], dict)
    assert len(enc.state["_modules"]) > 0
