"""Hostile checkpoints and careless OUT directories against the reader and the converter CLIs.

Every payload is built here by hand (pickle opcodes, zipfile, lzma, converters.pickle_writer;
no torch). The payloads that would exhaust memory or crash the process run through the
converter CLIs in one subprocess under a 2 GiB address-space limit; each must end in exit
status 2 with one line on stderr, no OUT, a message naming the limit (not a MemoryError), and
the process must survive them all. The StyleGAN2 heap-leak snapshot runs through
`python -m converters.stylegan2_ada` itself (runpy, as -m does, after setting the limit).
"""
import collections
import copyreg
import json
import lzma
import os
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import official_files
import pytest
from test_torch_pickle import HOOKS, _zip

from converters import cli, pickle_writer
from converters import stylegan2_ada as sg2
from converters import torch_pickle as tp
from converters import torchvision_resnet as tvr
from converters.pickle_writer import Build, Global, Instance, PersistentId, Raw, Reduce
from mgr_jax import variables_io
from mgr_jax.models import stylegan2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEMORY_LIMIT = 2 << 30  # RLIMIT_AS of the payload subprocesses
GIB = 1 << 30


# Set by the child itself, first thing: preexec_fn would fork this multithreaded (JAX) process.
_LIMIT_MEMORY = ("import resource\n"
                 f"resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT}))\n")
# What `python -m converters.X ARGS` does (runpy), under the limit.
_RUN_MODULE = ("import runpy, sys\n"
               "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)")


def _run_limited(code, *args):
    """Run Python `code` in a subprocess at the repository root, under RLIMIT_AS."""
    return subprocess.run([sys.executable, "-c", _LIMIT_MEMORY + code, *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def _zip_pickle(obj):
    """The data.pkl opcodes of `obj` (storages as zip persistent ids)."""
    return pickle_writer._Writer(2, "zip").dumps(obj)


def _tensor(key, numel, size, stride, offset=0, stype="FloatStorage"):
    """A _rebuild_tensor_v2 call over zip storage record `key` of `numel` elements."""
    pid = PersistentId(("storage", Global("torch", stype), key, "cpu", numel))
    return Reduce(Global("torch._utils", "_rebuild_tensor_v2"),
                  (pid, offset, tuple(size), tuple(stride), False, HOOKS))


def _system(marker):
    return Reduce(Global("os", "system"), (f"touch {marker}",))


# ---------------------------------------------------------------------------------------------
# Payloads that would exhaust memory or crash (run in the subprocess)


def _stride0(path, size):
    """A zip state dict whose one 4-byte storage is viewed with stride 0 as `size`."""
    t = _tensor("0", 1, size, (0,) * len(size))
    _zip(path, _zip_pickle({"conv1.weight": t}), {"0": b"\x00" * 4})


def _bytearray_bomb(path):
    _zip(path, _zip_pickle({"x": Reduce(Global("builtins", "bytearray"), (2 ** 40,))}), {})


def _patch_member(path, name, method, file_size):
    """Rewrite the compression method and uncompressed size of zip member `name` in place
    (local header and central directory), leaving its bytes as they are."""
    data = bytearray(path.read_bytes())
    raw = name.encode()
    for sig, method_at, size_at, name_at in ((b"PK\x03\x04", 8, 22, 30),
                                             (b"PK\x01\x02", 10, 24, 46)):
        start = 0
        while (start := data.find(sig, start)) >= 0:
            if data[start + name_at:start + name_at + len(raw)] == raw:
                struct.pack_into("<H", data, start + method_at, method)
                struct.pack_into("<I", data, start + size_at, file_size)
            start += 4
    path.write_bytes(bytes(data))


def _zip_bomb(path, expanded=7 * GIB // 2):
    """A storage record deflated from `expanded` zero bytes (a few MB in the file): each
    16 MiB block of zeros compresses, after a full flush, to the same bytes."""
    chunk = 16 << 20
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    body = block * (expanded // chunk) + zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    t = _tensor("0", expanded // 4, (expanded // 4,), (1,))
    _zip(path, _zip_pickle({"conv1.weight": t}), {"0": body})
    _patch_member(path, "archive/data/0", zipfile.ZIP_DEFLATED, expanded)


def _xz_bomb(path, expanded=7 * GIB // 2):
    """Concatenated xz streams of 16 MiB of zeros each: `expanded` bytes once decompressed."""
    stream = lzma.compress(bytes(16 << 20), preset=0)
    path.write_bytes(stream * (expanded // (16 << 20)))


def _deep_tuple_key(path, depth=10 ** 6):
    """{((...(0,)...),): 1}: hashing a tuple this deep overflows the C stack."""
    path.write_bytes(b"\x80\x02}K\x00" + b"\x85" * depth + b"K\x01s.")


def _deep_lists(path, depth=10 ** 5):
    """[[[...]]] nested `depth` deep (any recursive walk of it fails)."""
    path.write_bytes(b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b".")


def _bytearray8(path):
    """BYTEARRAY8 announcing 2**40 bytes."""
    path.write_bytes(b"\x80\x05\x96" + (2 ** 40).to_bytes(8, "little") + b".")


def _memo_amplification(path, n=1 << 20, calls=2000):
    """One 1 MiB string, memoized, encoded 2000 times by _codecs.encode (2 GiB of copies)."""
    head = (b"\x80\x02c_codecs\nencode\nq\x000X" + n.to_bytes(4, "little") + b"a" * n
            + b"q\x010X\x06\x00\x00\x00latin1q\x020")
    body = b"](" + b"h\x00h\x01h\x02\x86R" * calls + b"e."
    _zip(path, head + body, {})


def _stand_in_amplification(path, keys=10 ** 5, calls=10 ** 4):
    """One memoized 100k-key dict passed 10k times to StyleGAN2's persistent-object stand-in,
    which copies its argument (tens of GB of copies)."""
    items = b"".join(b"J" + i.to_bytes(4, "little") + b"K\x00" for i in range(keys))
    head = (b"\x80\x02}q\x00(" + items + b"u0"
            + b"ctorch_utils.persistence\n_reconstruct_persistent_obj\nq\x010")
    path.write_bytes(head + b"](" + b"h\x01h\x00\x85R" * calls + b"e.")


# name -> (writer, what the one error line must contain[, converter module])
_BOMBS = {
    "stride0_4tib": (lambda p: _stride0(p, (1 << 20, 1 << 20)), "limit of"),
    "stride0_2gib": (lambda p: _stride0(p, (1 << 29,)), "limit of"),
    "bytearray_2_40": (_bytearray_bomb, "refusing builtins.bytearray(1099511627776)"),
    "zip_bomb_member": (_zip_bomb, "zip member archive/data/0 needs"),
    "xz_bomb": (_xz_bomb, "xz stream's decompressed data needs"),
    "deep_tuple_dict_key": (_deep_tuple_key, "nested more than"),
    "deep_lists": (_deep_lists, "nested more than"),
    "bytearray8_2_40": (_bytearray8, "BYTEARRAY8 of 1099511627776 bytes"),
    "memo_amplification": (_memo_amplification, "_codecs.encode needs"),
    "stand_in_amplification": (_stand_in_amplification, "the arguments of",
                               "converters.stylegan2_ada"),
}

# Marker payloads: the CLI refuses them by name, and the marker file never appears.
_MARKERS = {
    "os_system_zip": lambda p, m: _zip(p, _zip_pickle({"w": _system(m)}), {}),
    "exec_plain": lambda p, m: p.write_bytes(pickle_writer.dumps_plain(
        Reduce(Global("builtins", "exec"), (f"open({str(m)!r}, 'w').close()",)))),
    "system_inst_opcode": lambda p, m: p.write_bytes(
        b"\x80\x02(X" + len(f"touch {m}").to_bytes(4, "little") + f"touch {m}".encode()
        + b"ios\nsystem\n."),
}

_HARNESS = r"""
import contextlib, importlib, io, json, os, resource, sys
results = {}
for name, (module, argv, out) in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = importlib.import_module(module).main(argv)
        except SystemExit as e:
            status = e.code
    results[name] = {"status": status, "err": err.getvalue(), "out": os.path.lexists(out)}
# Peak resident memory of this process image: VmHWM (ru_maxrss would carry over the forking
# parent's peak across exec on Linux, e.g. a pytest process that grew large).
with open("/proc/self/status") as f:
    rss = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(json.dumps({"results": results, "maxrss_kb": rss}))
"""


@pytest.fixture(scope="module")
def payload_runs(tmp_path_factory):
    """Every bomb and marker payload through `converters.torchvision_resnet.main`, in one
    subprocess under RLIMIT_AS = 2 GiB: {"results": {name: ...}, "maxrss_kb": ...}."""
    tmp = tmp_path_factory.mktemp("payloads")
    cases = {}
    for name, (write, *_) in _BOMBS.items():
        write(tmp / f"{name}.pth")
    for name, write in _MARKERS.items():
        write(tmp / f"{name}.pth", tmp / "pwned")
    for name in list(_BOMBS) + list(_MARKERS):
        entry = _BOMBS.get(name, ())
        module = entry[2] if len(entry) > 2 else "converters.torchvision_resnet"
        out = str(tmp / f"out_{name}")
        cases[name] = (module, [str(tmp / f"{name}.pth"), out], out)
    done = _run_limited(_HARNESS, json.dumps(cases))
    assert done.returncode == 0, f"the payload process died ({done.returncode}): " \
                                 f"{done.stderr[-2000:]}"
    runs = json.loads(done.stdout.strip().splitlines()[-1])
    runs["marker"] = tmp / "pwned"
    return runs


def _assert_one_line_refusal(result, expected):
    lines = result["err"].strip().splitlines()
    assert result["status"] == 2, result
    assert len(lines) == 1 and lines[0].startswith("error: "), result
    assert expected in lines[0], result
    assert "MemoryError" not in lines[0] and "out of memory" not in lines[0], result
    assert not result["out"], result


@pytest.mark.parametrize("name", sorted(_BOMBS))
def test_bombs_refused_in_one_line_under_memory_limit(payload_runs, name):
    _assert_one_line_refusal(payload_runs["results"][name], _BOMBS[name][1])


def test_payload_process_memory_stays_bounded(payload_runs):
    assert payload_runs["maxrss_kb"] * 1024 < 1.5 * GIB, payload_runs["maxrss_kb"]


@pytest.mark.parametrize("name", sorted(_MARKERS))
def test_marker_payloads_refused_by_cli(payload_runs, name):
    _assert_one_line_refusal(payload_runs["results"][name], "refusing to load")
    assert not payload_runs["marker"].exists()


def test_limits_are_named_in_process(tmp_path):
    path = tmp_path / "s0.pth"
    _stride0(path, (1 << 16, 1 << 16))  # 16 GiB from a 4-byte storage
    with pytest.raises(tp.CheckpointFormatError, match=r"limit of [\d,]+ bytes .*16 x its"):
        tp.load(path)


# ---------------------------------------------------------------------------------------------
# The heap leak: an array aliasing one byte used as a storage


def _tiny_stylegan2_snapshot(path):
    module = stylegan2.Generator(z_dim=8, c_dim=2, w_dim=8, img_resolution=8, mapping_layers=2,
                                 channel_base=64, channel_max=8)
    official_files.write_stylegan2_ada(path, module, stylegan2.random_variables(module, 0))


def _replace_first_storage(data, replacement):
    """`data` with its first `_load_from_bytes(b)` call replaced by `replacement` opcodes."""
    start = data.index(b"ctorch.storage\n_load_from_bytes\n")
    at = start + len(b"ctorch.storage\n_load_from_bytes\n")
    assert data[at:at + 1] == b"B"
    n = int.from_bytes(data[at + 1:at + 5], "little")
    end = at + 5 + n
    assert data[end:end + 2] == b"\x85R"
    return data[:start] + replacement + data[end + 2:]


def _aliasing_ndarray(n=1 << 12):
    """numpy.ndarray((n,), 'u1', b'x', 0, (0,)): n elements that all alias one byte."""
    return Reduce(Global("numpy", "ndarray"), ((n,), "u1", b"x", 0, (0,)))


def test_heap_leak_snapshot_refused_by_stylegan2_cli(tmp_path):
    good = tmp_path / "good.pkl"
    _tiny_stylegan2_snapshot(good)
    module, _ = sg2.convert(str(good))  # the snapshot is valid as written
    assert module.img_resolution == 8
    evil = tmp_path / "leak.pkl"
    evil.write_bytes(_replace_first_storage(good.read_bytes(),
                                            pickle_writer.fragment(_aliasing_ndarray())))
    out = tmp_path / "out"
    done = _run_limited(_RUN_MODULE, "converters.stylegan2_ada", evil, out)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and done.stdout == "", done
    assert len(lines) == 1 and "refusing to call numpy.ndarray" in lines[0], done.stderr
    assert "Traceback" not in done.stderr and not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["good.pkl", "leak.pkl"]


def _numpy_array_opcodes(array, protocol):
    """The opcodes pickle writes for `array` itself (no PROTO, FRAME or STOP)."""
    data = pickle.dumps(array, protocol=protocol)
    return Raw(data[11 if data[2:3] == pickle.FRAME else 2:-1])


def _plain(tmp_path, obj, name="p.pkl"):
    path = tmp_path / name
    path.write_bytes(pickle_writer.dumps_plain(obj))
    return path


@pytest.mark.parametrize("storage, match", [
    (_aliasing_ndarray(), "refusing to call numpy.ndarray"),
    (Instance(Global("numpy", "ndarray"), None, ((1 << 12,), "u1")), "NEWOBJ on <numpy.ndarray>"),
    (Reduce(Global("numpy.core.multiarray", "_reconstruct"),
            (Global("numpy", "ndarray"), (1 << 30,), b"b")), "is not how numpy pickles"),
    (Build(Reduce(Global("numpy._core.multiarray", "_reconstruct"),
                  (Global("numpy", "ndarray"), (0,), b"b")),
           (1, (1 << 20,), Reduce(Global("numpy", "dtype"), ("u1", False, True)), False, b"x")),
     "given 1 bytes"),
])
def test_user_built_arrays_never_become_storages(tmp_path, storage, match):
    t = Reduce(Global("torch._utils", "_rebuild_tensor_v2"),
               (storage, 0, (1 << 12,), (1,), False, HOOKS))
    with pytest.raises(tp.CheckpointFormatError, match=match) as e:
        tp.load(_plain(tmp_path, {"w": t}))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_valid_numpy_array_is_not_a_storage(tmp_path, protocol):
    array = np.arange(1 << 12, dtype=np.uint8)
    path = tmp_path / "a.pkl"
    path.write_bytes(pickle.dumps({"a": array}, protocol=protocol))
    np.testing.assert_array_equal(tp.load(path)["a"], array)  # loads as an array ...
    t = Reduce(Global("torch._utils", "_rebuild_tensor_v2"),
               (_numpy_array_opcodes(array, protocol), 0, (1 << 12,), (1,), False, HOOKS))
    with pytest.raises(tp.CheckpointFormatError, match="not over a storage read from the file"):
        tp.load(_plain(tmp_path, {"w": t}))


def test_numpy_pickles_load_and_leave_numpy_unchanged(tmp_path):
    """Arrays, scalars and dtypes in numpy's pickle form load as numpy itself loads them."""
    want = {"f": np.arange(6, dtype=">f4").reshape(2, 3), "c": np.ones(3, np.complex64),
            "b": np.array([True, False]), "s": np.float64(2.5), "i": np.int16(-3),
            "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "d": np.dtype(">i8")}
    for protocol in (2, 4, 5):
        path = tmp_path / f"np{protocol}.pkl"
        path.write_bytes(pickle.dumps(want, protocol=protocol))
        got, ref = tp.load(path), pickle.loads(path.read_bytes())  # our own file: safe
        assert got["d"] == ref["d"] == np.dtype(">i8")
        for key in set(want) - {"d"}:
            assert got[key].dtype == ref[key].dtype and np.array_equal(got[key], ref[key]), key
        assert got["fortran"].flags.f_contiguous
    assert np.dtype("i8").byteorder == "=" and np.dtype("f4").isnative
    obj = np.array([None, 1], dtype=object)
    (tmp_path / "obj.pkl").write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(tp.CheckpointFormatError, match="not a plain number type"):
        tp.load(tmp_path / "obj.pkl")


# ---------------------------------------------------------------------------------------------
# No opcode changes an allowed object


class _CallerClass:
    """A caller's stand-in class, as converters pass them in extra_globals."""


@pytest.mark.parametrize("payload, match", [
    (Build(Global("torch._utils", "_rebuild_tensor_v2"), {"pwned": 1}), "BUILD on"),
    (Build(Global("torch._utils", "_rebuild_tensor_v2"), (None, {"__defaults__": (1,)})),
     "BUILD on"),
    (Build(Global("my.pkg", "Caller"), (None, {"pwned": 1})), "a class is never changed"),
    (Build(Global("torch", "Tensor"), {"name": "pwned"}), "BUILD on <torch.Tensor>"),
    (Build(Global("builtins", "set"), (None, {"pwned": 1})), "BUILD on"),
    (Build(Reduce(Global("my.pkg", "Caller"), ()), (None, {"__class__": Global("my.pkg", "C2")})),
     "not a dict of plain attribute names"),
    (Build(Reduce(Global("collections", "OrderedDict"), ()), {"__class__": 1}),
     "not a dict of plain attribute names"),
    (Raw(b"ctorch._utils\n_rebuild_tensor_v2\nX\x01\x00\x00\x00aK\x01s"), "SETITEM on"),
    (Raw(pickle_writer.fragment(np.zeros(2, np.float32)) + b"(K\x00K\x01u"), "SETITEMS on"),
    (Raw(b"cmy.pkg\nCaller\n(K\x01e"), "APPENDS on"),
])
def test_build_and_setitems_never_change_allowed_objects(tmp_path, payload, match):
    extra = {"my.pkg.Caller": _CallerClass, "my.pkg.C2": dict}
    with pytest.raises(tp.CheckpointFormatError, match=match):
        tp.load(_plain(tmp_path, {"x": payload}), extra_globals=extra)
    assert not hasattr(_CallerClass, "pwned") and _CallerClass.__module__ == __name__
    state = tp.load(_plain(tmp_path, {"k": Build(Reduce(Global("my.pkg", "Caller"), ()),
                                                 {"a": 1})}, "ok.pkl"), extra_globals=extra)
    assert type(state["k"]) is _CallerClass and state["k"].a == 1  # stand-ins still get state


@pytest.mark.parametrize("target", [np.zeros(3, np.float32),
                                    pickle_writer.Storage(np.zeros(3, np.float32))])
def test_build_on_a_tensor_or_storage_refused(tmp_path, target):
    state = (1, (1 << 20,), Reduce(Global("numpy", "dtype"), ("u1", False, True)), False, b"x")
    with pytest.raises(tp.CheckpointFormatError, match="BUILD on"):
        tp.load(_plain(tmp_path, {"t": Build(target, state)}))


def _unicode(text):
    """BINUNICODE opcode pushing `text`."""
    raw = text.encode()
    return b"X" + len(raw).to_bytes(4, "little") + raw


_CODE_PAYLOADS = {  # marker path -> a payload that would create it if anything of it ran
    "exec": lambda m: Reduce(Global("builtins", "exec"), (f"open({m!r}, 'w').close()",)),
    "popen_reduce": lambda m: Reduce(Global("subprocess", "Popen"), (["touch", m],)),
    "popen_newobj": lambda m: Instance(Global("subprocess", "Popen"), None, (["touch", m],)),
    "system_inst": lambda m: Raw(b"(" + _unicode(f"touch {m}") + b"ios\nsystem\n"),
    "system_obj": lambda m: Raw(b"(cos\nsystem\n" + _unicode(f"touch {m}") + b"o"),
    "via_rebuild_from_type": lambda m: Reduce(
        Global("torch._tensor", "_rebuild_from_type_v2"),
        (Global("os", "system"), None, (f"touch {m}",), None)),
    "via_create_array": lambda m: Reduce(
        Global("dill._dill", "_create_array"), (Global("os", "system"), (f"touch {m}",), None)),
}


@pytest.mark.parametrize("name", sorted(_CODE_PAYLOADS))
def test_marker_never_written(tmp_path, name):
    marker = str(tmp_path / "m")
    path = _plain(tmp_path, {"x": _CODE_PAYLOADS[name](marker)})
    with pytest.raises(tp.UnsafePickleError, match="refusing to load"):
        tp.load(path)
    assert not os.path.exists(marker)


def test_extension_codes_refused(tmp_path):
    marker = tmp_path / "m"
    copyreg.add_extension("os", "system", 0xF1)
    try:
        cmd = f"touch {marker}".encode()
        (tmp_path / "ext.pkl").write_bytes(
            b"\x80\x02\x82\xf1X" + len(cmd).to_bytes(4, "little") + cmd + b"\x85R.")
        with pytest.raises(tp.CheckpointFormatError, match="extension codes"):
            tp.load(tmp_path / "ext.pkl")
    finally:
        copyreg.remove_extension("os", "system", 0xF1)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Tensor extents and malformed streams


@pytest.mark.parametrize("offset, size, stride, match", [
    (0, (5,), (1,), "past its storage"),
    (4, (1,), (1,), "past its storage"),
    (0, (2, 2), (3, 1), "past its storage"),
    (0, (-1,), (1,), "negative"),
    (0, (2,), (-1,), "negative"),
    (-1, (1,), (1,), "negative"),
    (0, (2, 2), (1,), "differ in length"),
    (0, (1,) * 65, (1,) * 65, "at most 64"),
    (0, (2,), (2 ** 62,), "past its storage"),
    (0, ("2",), (1,), "not an integer"),
])
def test_tensor_extent_must_fit_its_storage(tmp_path, offset, size, stride, match):
    _zip(tmp_path / "t.pth", _zip_pickle({"t": _tensor("0", 4, size, stride, offset)}),
         {"0": b"\x00" * 16})
    with pytest.raises(tp.CheckpointFormatError, match=match):
        tp.load(tmp_path / "t.pth")


def test_legacy_count_must_fit_the_file(tmp_path):
    data = bytearray(pickle_writer.dumps_legacy({"t": np.arange(4, dtype=np.float32)}))
    count_at = len(data) - 16 - 8  # the one storage: 8-byte count, then 16 bytes
    struct.pack_into("<q", data, count_at, 2 ** 40)
    with pytest.raises(tp.CheckpointFormatError, match="announced"):
        tp.loads_legacy_bytes(bytes(data))


@pytest.mark.parametrize("raw, match", [
    (b"\x80\x02\x8e" + (2 ** 40).to_bytes(8, "little") + b".", "corrupt|end of data"),
    (b"\x80\x02\xff.", "corrupt"),
    (b"\x80\x02h\x07.", "corrupt"),
    (b"\x80\x02K\x01K\x02s.", "corrupt|SETITEM"),
    (b"\x80\x02" + b"(" * 10000 + b".", "corrupt"),
    (b"\x80\x02" + b"]" * 300 + b"a" * 299 + b".", "nested more than 200"),
    (b"\x80\x02K\x00" + b"\x85" * 300 + b".", "nested more than 200"),
    (b"\x80\x02}" + b"K\x00}" * 300 + b"s" * 300 + b".", "nested more than 200"),
], ids=["binbytes8_2_40", "unknown_opcode", "missing_memo", "setitem_empty_stack",
        "marks_only", "deep_lists", "deep_tuples", "deep_dicts"])
def test_malformed_opcodes_are_one_format_error(tmp_path, raw, match):
    (tmp_path / "bad.pkl").write_bytes(raw)
    with pytest.raises(tp.CheckpointFormatError, match=match) as e:
        tp.load(tmp_path / "bad.pkl")
    assert "\n" not in str(e.value) and len(str(e.value)) < 400


# ---------------------------------------------------------------------------------------------
# Converter CLIs: OUT is new, or an earlier conversion with --overwrite; nothing half-written


@pytest.fixture(scope="module")
def resnet_pth(tmp_path_factory):
    """A small torchvision ResNet-18 state dict in torch.save's zip format."""
    from test_torchvision_resnet import _random_state_dict
    path = tmp_path_factory.mktemp("resnet") / "r18.pth"
    pickle_writer.save(path, _random_state_dict("resnet18", width=0.125))
    return str(path)


def _err(capsys):
    return capsys.readouterr().err.strip().splitlines()


def test_cli_refuses_existing_user_directory(resnet_pth, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("user data")
    (out / "meta.json").write_text('{"kind": "mine"}')
    (out / "variables").mkdir()
    for extra in ([], ["--overwrite"]):
        assert tvr.main([resnet_pth, str(out), *extra]) == cli.EXIT_ERROR
        lines = _err(capsys)
        assert len(lines) == 1 and "not a converted-variables directory" in lines[0]
    assert sorted(os.listdir(out)) == ["meta.json", "notes.txt", "variables"]
    assert (out / "notes.txt").read_text() == "user data"
    assert sorted(os.listdir(tmp_path)) == ["mine"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert tvr.main([resnet_pth, str(afile), "--overwrite"]) == cli.EXIT_ERROR
    assert afile.read_text() == "x" and len(_err(capsys)) == 1


def test_cli_overwrite_replaces_only_a_converted_directory(resnet_pth, tmp_path, capsys):
    out = tmp_path / "converted"
    assert tvr.main([resnet_pth, str(out)]) == 0
    assert sorted(os.listdir(out)) == ["meta.json", "variables"]
    capsys.readouterr()
    assert tvr.main([resnet_pth, str(out), "--num_classes", "3"]) == cli.EXIT_ERROR
    lines = _err(capsys)
    assert len(lines) == 1 and "exists" in lines[0] and "--overwrite" in lines[0]
    assert json.loads((out / "meta.json").read_text())["num_classes"] == 10
    assert tvr.main([resnet_pth, str(out), "--num_classes", "3", "--overwrite"]) == 0
    assert json.loads((out / "meta.json").read_text())["num_classes"] == 3
    assert sorted(os.listdir(tmp_path)) == ["converted"]  # no staging or old copy left
    link = tmp_path / "link"
    link.symlink_to(out)
    for target in (str(link), str(link) + "/"):  # a link is never replaced, nor followed
        assert tvr.main([resnet_pth, target, "--overwrite"]) == cli.EXIT_ERROR
    assert link.is_symlink() and sorted(os.listdir(tmp_path)) == ["converted", "link"]
    (out / "mine.txt").write_text("added by the user")
    assert tvr.main([resnet_pth, str(out), "--overwrite"]) == cli.EXIT_ERROR
    assert (out / "mine.txt").read_text() == "added by the user"


def test_cli_failure_leaves_nothing_and_keeps_old_conversion(resnet_pth, tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"PK\x03\x04 truncated")
    nested = tmp_path / "a" / "b" / "out"
    assert tvr.main([str(bad), str(nested)]) == cli.EXIT_ERROR
    assert len(_err(capsys)) == 1 and not (tmp_path / "a").exists()
    out = tmp_path / "converted"
    assert tvr.main([resnet_pth, str(out)]) == 0
    before = (out / "meta.json").read_text()
    assert tvr.main([str(bad), str(out), "--overwrite"]) == cli.EXIT_ERROR
    assert (out / "meta.json").read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["bad.pth", "converted"]


def test_cli_argument_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        sg2.main(["only_one_argument"])
    assert e.value.code == cli.EXIT_ERROR
    lines = _err(capsys)
    assert len(lines) == 1 and lines[0].startswith("error: ")


def test_save_variables_never_replaces_a_user_directory(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "data.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a variables directory"):
        variables_io.save_variables(user, {"params": {"w": np.ones(2)}}, {"kind": "x"})
    assert (user / "data.txt").read_text() == "keep"
    target = tmp_path / "vars"
    variables_io.save_variables(target, {"params": {"w": np.ones(2)}}, {"kind": "x"})
    variables_io.save_variables(target, {"params": {"w": np.zeros(2)}}, {"kind": "y"})
    variables, meta = variables_io.load_variables(target)
    assert meta["kind"] == "y" and not variables["params"]["w"].any()
    assert sorted(os.listdir(tmp_path)) == ["user", "vars"]


def test_ordered_dict_state_and_metadata_still_load(tmp_path):
    """torch state_dicts are OrderedDicts with a `_metadata` attribute set by BUILD."""
    sd = collections.OrderedDict([("w", np.ones(2, np.float32))])
    pickle_writer.save(tmp_path / "sd.pth", Build(sd, {"_metadata": {"": {"version": 1}}}))
    got = tp.load(tmp_path / "sd.pth")
    assert got._metadata == {"": {"version": 1}} and list(got) == ["w"]
