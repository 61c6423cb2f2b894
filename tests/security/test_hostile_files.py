"""Hostile and broken files (issue 13, "resource exhaustion from tiny files" and "tracebacks instead of
one-line errors"): every size read from a file is bounded before anything is allocated, and every crafted
file ends in one ``ModelFileError``/``SelfDenoiseError`` (the CLI: exit 2, one ``selfdenoise: error:`` line).

Attack files are generated here: state-dict pickles written opcode by opcode, model headers and rdf.yaml
descriptions edited field by field, a YAML "billion laughs", an encrypted-flag zip entry, a zarr chunk
that is not zlib data, a truncated TIFF. Attacks about memory run in a child process whose address space
is capped (RLIMIT_AS), so a regression fails the test instead of eating the machine, and report the
child's peak resident memory. A seeded fuzz loop mutates valid files and asserts that nothing but our
error types comes out."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import resource
import struct
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch
import yaml

from napari_selfdenoise.core import bmz
from napari_selfdenoise.core.config import TrainConfig
from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image
from napari_selfdenoise.core.denoiser import Denoiser
from napari_selfdenoise.core.errors import ModelFileError, SelfDenoiseError
from napari_selfdenoise.core.io.images import read_image
from napari_selfdenoise.core.trust.state_dict import read_state_dict

TINY = dict(patch=32, batch=2, features=4, depth=2, steps_per_epoch=2, seed=0, device="cpu")
# Extra address space a child may use above what its imports took (torch alone maps ~0.8 GB): the attacks
# below would take 1.3 to 8 GB without the bounds.
HEADROOM = 1024**3
PEAK_RSS_LIMIT = 700 * 1024**2  # a refused attack stays near the imports' ~300 MB


# ------------------------------------------------------------------------------------------ helpers


def noisy(shape=(64, 64), seed=0) -> np.ndarray:
    return add_noise(fluorescence_image(shape, seed=seed), sigma=0.15, seed=seed + 1).astype(np.float32)


def one_line(err: BaseException) -> str:
    """The message of an error we raise: one line (the CLI prints it as is)."""
    text = str(err)
    assert text and "\n" not in text, repr(text)
    return text


def limited_run(args, cwd=None) -> tuple[subprocess.CompletedProcess, int]:
    """Run ``python ARGS`` with its address space capped at 2 GiB; (result, peak RSS in bytes)."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (2 * 1024**3, 2 * 1024**3))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(os.devnull, "rb") as stdin:
        process = subprocess.Popen([sys.executable, *map(str, args)], stdin=stdin, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, cwd=cwd, env=env,
                                   preexec_fn=cap, text=True)  # noqa: PLW1509 -- it only sets the child's rlimits
        stdout, stderr = process.communicate(timeout=600)
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr), _peak_rss_of_last_child()


def _peak_rss_of_last_child() -> int:
    # RUSAGE_CHILDREN is the largest of all waited-for children: good enough as an upper bound
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def in_child(code: str, cwd) -> dict:
    """Run ``code`` in a fresh Python whose address space may grow by ``HEADROOM`` after the imports;
    the code sets ``result`` (a dict); returns it with the child's peak RSS (``maxrss``, bytes)."""
    script = textwrap.dedent(f"""
        import json, resource, sys, traceback
        import torch
        from napari_selfdenoise.core.denoiser import Denoiser
        from napari_selfdenoise.core.trust.state_dict import read_state_dict
        size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size + {HEADROOM}, size + {HEADROOM}))
        result = {{}}
        try:
    """) + textwrap.indent(textwrap.dedent(code), "    ") + textwrap.dedent("""
        except BaseException as err:
            result = {"type": type(err).__name__, "message": str(err)[:500], "where": traceback.format_exc()[-800:]}
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (pytest) across exec
        result["maxrss"] = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024
        print("RESULT " + json.dumps(result))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, (done.returncode, done.stdout[-2000:], done.stderr[-3000:])
    return json.loads(lines[-1][len("RESULT "):])


# ---------------------------------------------------------------- state-dict pickles, opcode by opcode


def _op_value(value) -> bytes:
    """One pickle value: int (BININT or LONG1), str (BINUNICODE), bool, None or a tuple of values."""
    if isinstance(value, bool):
        return b"\x88" if value else b"\x89"
    if value is None:
        return b"N"
    if isinstance(value, int):
        if -2**31 <= value < 2**31:
            return b"J" + struct.pack("<i", value)
        raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
        return b"\x8a" + bytes([len(raw)]) + raw
    if isinstance(value, str):
        data = value.encode()
        return b"X" + struct.pack("<I", len(data)) + data
    if isinstance(value, tuple):
        return b"(" + b"".join(_op_value(v) for v in value) + b"t"
    raise TypeError(value)


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def tensor_op(key="0", numel=1, offset=0, size=(1,), stride=(1,), storage="FloatStorage") -> bytes:
    """``_rebuild_tensor_v2((storage record), offset, size, stride, False, OrderedDict())``, as torch.save
    writes it, with every field ours to choose."""
    record = b"(" + _op_value("storage") + _global("torch", storage) + _op_value(key) + _op_value("cpu") \
        + _op_value(numel) + b"tQ"
    args = b"(" + record + _op_value(offset) + _op_value(size) + _op_value(stride) + b"\x89" \
        + _global("collections", "OrderedDict") + b")R" + b"t"
    return _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def state_pickle(entries: dict[str, bytes]) -> bytes:
    """A protocol-2 pickle of a dict {name: the value ops}."""
    body = b"".join(_op_value(k) + v for k, v in entries.items())
    return b"\x80\x02}(" + body + b"u."


def state_archive(payload: bytes, storages: dict[str, bytes]) -> bytes:
    """A torch.save zip: archive/data.pkl and its raw storages archive/data/KEY."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", payload)
        for key, data in storages.items():
            archive.writestr(f"archive/data/{key}", data)
        archive.writestr("archive/version", b"3\n")
    return buffer.getvalue()


def floats(n: int) -> bytes:
    return np.arange(n, dtype=np.float32).tobytes()


def test_the_crafted_pickles_are_what_torch_save_writes():
    """The assembler is faithful: a plain record reads back as torch wrote it."""
    data = state_archive(state_pickle({"w": tensor_op(numel=6, size=(2, 3), stride=(3, 1))}), {"0": floats(6)})
    got = read_state_dict(data, "x")
    assert torch.equal(got["w"], torch.arange(6, dtype=torch.float32).reshape(2, 3))


STRIDE_TRICKS = {
    # 4 bytes of storage seen as 20000 x 16000 floats (1.28 GB): the 9.9 KB file
    "stride 0": (tensor_op(numel=1, size=(20000, 16000), stride=(0, 0)), {"0": floats(1)}, "stride-0"),
    "overlapping": (tensor_op(numel=2000, size=(1000, 1000), stride=(1, 1)), {"0": floats(2000)}, "stride-0"),
    "past the end": (tensor_op(numel=10, offset=5, size=(10,), stride=(1,)), {"0": floats(10)}, "past the end"),
    "negative offset": (tensor_op(numel=10, offset=-1, size=(2,), stride=(1,)), {"0": floats(10)}, "non-negative"),
    "negative size": (tensor_op(numel=10, size=(-2,), stride=(1,)), {"0": floats(10)}, "non-negative"),
    "negative stride": (tensor_op(numel=10, offset=9, size=(5,), stride=(-1,)), {"0": floats(10)}, "non-negative"),
    "size as text": (tensor_op(numel=10, size=("a", "b"), stride=(1, 1)), {"0": floats(10)}, "non-negative"),
    "size and stride lengths": (tensor_op(numel=10, size=(2, 5), stride=(1,)), {"0": floats(10)}, "matching"),
    "huge size": (tensor_op(numel=10, size=(2**70,), stride=(1,)), {"0": floats(10)}, "stride-0"),
    "numel as text": (tensor_op(numel="ten", size=(2,), stride=(1,)), {"0": floats(10)}, "declares"),
    "storage shorter than declared": (tensor_op(numel=100, size=(2,), stride=(1,)), {"0": floats(10)}, "shorter"),
    "missing storage": (tensor_op(key="7", numel=1), {"0": floats(1)}, "missing"),
    "storage key with a path": (tensor_op(key="../x", numel=1), {"0": floats(1)}, "storage key"),
    "ragged storage": (tensor_op(numel=1), {"0": b"\x00" * 6}, "whole number"),
}


@pytest.mark.parametrize("case", sorted(STRIDE_TRICKS))
def test_tensor_records_are_checked_against_their_storage(case):
    op, storages, message = STRIDE_TRICKS[case]
    with pytest.raises(ModelFileError, match=message) as info:
        read_state_dict(state_archive(state_pickle({"w": op}), storages), "weights.pt")
    one_line(info.value)


def test_one_storage_repeated_cannot_multiply_memory():
    """50 full views of one 1 MiB storage would clone into 50 MiB: more than twice the file's data."""
    n = 256 * 1024
    entries = {f"w{i}": tensor_op(numel=n, size=(n,), stride=(1,)) for i in range(50)}
    with pytest.raises(ModelFileError, match="far more memory"):
        read_state_dict(state_archive(state_pickle(entries), {"0": floats(n)}), "weights.pt")
    # tied weights (the same storage twice) are fine
    tied = {"a": tensor_op(numel=n, size=(n,), stride=(1,)), "b": tensor_op(numel=n, size=(n,), stride=(1,))}
    assert set(read_state_dict(state_archive(state_pickle(tied), {"0": floats(n)}), "x")) == {"a", "b"}


MALFORMED_PICKLES = {
    "missing memo entry": b"\x80\x02}(X\x01\x00\x00\x00wh\x63u.",
    "stack underflow": b"\x80\x02s.",
    "setitem without a key": b"\x80\x02}X\x01\x00\x00\x00ws.",
    "setitems with an odd count": b"\x80\x02}(X\x01\x00\x00\x00wu.",
    "append to a dict": b"\x80\x02}Na.",
    "tuple underflow": b"\x80\x02\x87.",
    "no stop": b"\x80\x02}",
    "two values left": b"\x80\x02}}.",
    "reduce with a list": _global("torch._utils", "_rebuild_tensor_v2").join([b"\x80\x02", b"]R."]),
    "unhashable key": b"\x80\x02}]Ns.",
    "parameter of nothing": b"\x80\x02" + _global("torch._utils", "_rebuild_parameter") + b")R.",
    "ordered dict of a number": b"\x80\x02" + _global("collections", "OrderedDict") + b"J\x01\x00\x00\x00\x85R.",
    "truncated opcode": b"\x80\x02}(X\xff\x00\x00\x00w",
    "memo of an empty stack": b"\x80\x02q\x00}.",
}


@pytest.mark.parametrize("case", sorted(MALFORMED_PICKLES))
def test_malformed_pickles_are_one_model_file_error(case):
    with pytest.raises(ModelFileError) as info:
        read_state_dict(state_archive(MALFORMED_PICKLES[case], {"0": floats(1)}), "weights.pt")
    one_line(info.value)


def test_stride_zero_state_dict_stays_in_bounded_memory(tmp_path):
    """The 1.28 GB view of 4 bytes is refused before anything is allocated (child with capped memory)."""
    path = tmp_path / "weights.pt"
    path.write_bytes(state_archive(state_pickle({"w": tensor_op(numel=1, size=(20000, 16000), stride=(0, 0))}),
                                   {"0": floats(1)}))
    assert path.stat().st_size < 10_000
    result = in_child(f"read_state_dict(open({str(path)!r}, 'rb').read(), 'weights.pt')", tmp_path)
    assert result.get("type") == "ModelFileError", result
    assert result["maxrss"] < PEAK_RSS_LIMIT, result


# ------------------------------------------------------------------------------------- model headers


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    model = Denoiser("n2v2", "YX", steps=2, **TINY).fit(noisy())
    return model.save(folder / "good.sdmodel")


def edit_model(source, target, edit=None, replace: dict | None = None):
    """A copy of a model file: ``edit(header)`` changes the JSON (or returns new text), ``replace`` entries."""
    replace = dict(replace or {})
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            data = old.read(info.filename)
            if info.filename == "selfdenoise.json" and edit is not None:
                header = json.loads(data)
                text = edit(header)
                data = (text if isinstance(text, str) else json.dumps(header)).encode()
            new.writestr(info.filename, replace.pop(info.filename, data))
        for name, data in replace.items():
            new.writestr(name, data)
    return target


def _set(path: str, value):
    """An edit setting header[a][b]... = value for ``path`` 'a.b...'."""
    def edit(header):
        *parents, last = path.split(".")
        node = header
        for key in parents:
            node = node[key]
        node[last] = value
    return edit


def _nan_weights(source):
    from safetensors.torch import load, save

    with zipfile.ZipFile(source) as archive:
        weights = load(archive.read("weights.safetensors"))
    key = min(weights)
    weights[key] = weights[key].clone()
    weights[key].view(-1)[0] = float("nan")
    return {"weights.safetensors": save(weights)}


HEADER_LIES = {
    "features 2048": (_set("architecture.features", 2048), "features"),
    "depth 40": (_set("architecture.depth", 40), "depth"),
    "channels 10000": (_set("architecture.in_channels", 10_000), "in_channels"),
    "features as text": (_set("architecture.features", "32"), "features"),
    "dims 7": (_set("architecture.dims", 7), "dims"),
    "architecture a list": (_set("architecture", [1, 2]), "network description"),
    "deep JSON nesting": (lambda h: json.dumps(h)[:-1] + ', "history": ' + "[" * 100_000 + "]" * 100_000 + "}",
                          "not valid JSON"),
    "bigint format version": (lambda h: json.dumps(h).replace('"format_version": 1', '"format_version": '
                                                              + "9" * 5000), "format_version|JSON"),
    "training a list": (_set("training", [1, 2]), "training"),
    "step as text": (_set("training.step", "many"), "step"),
    "negative step": (_set("training.step", -5), "step"),
    "config a string": (_set("config", "n2v2"), "config"),
    "config lr NaN": (_set("config.lr", float("nan")), "lr"),
    "config lr_decay above 1": (_set("config.lr_decay", 5.0), "lr_decay"),
    "config lr_decay NaN": (_set("config.lr_decay", float("nan")), "lr_decay"),
    "config lr_decay as text": (_set("config.lr_decay", "half"), "lr_decay"),
    "config patch as text": (_set("config.patch", "big"), "patch"),
    "method options a list": (_set("config.method_options", [1]), "method_options"),
    "scale zero": (_set("normalization.scale", [0.0]), "scale"),
    "scale NaN": (lambda h: json.dumps(h).replace('"scale": [', '"scale": [NaN, '), "normali"),
    "scale per channel missing": (_set("normalization.scale", []), "normali"),
    "normalization a string": (_set("normalization", "percentile"), "normali"),
    "history a string": (_set("history", "long"), "history"),
    "optimizer groups a string": (_set("training.optimizer.param_groups", "x"), "optimizer"),
    "optimizer entry as text": (lambda h: h["training"]["optimizer"]["state"]["0"].update(step="soon"), "optimizer"),
}


@pytest.mark.parametrize("case", sorted(HEADER_LIES))
def test_header_lies_are_one_model_file_error(model_file, tmp_path, case):
    edit, message = HEADER_LIES[case]
    path = edit_model(model_file, tmp_path / "lie.sdmodel", edit)
    with pytest.raises(ModelFileError, match=message) as info:
        Denoiser.load(path)
    one_line(info.value)


def test_weights_with_nan_are_refused(model_file, tmp_path):
    path = edit_model(model_file, tmp_path / "nan.sdmodel", replace=_nan_weights(model_file))
    with pytest.raises(ModelFileError, match="NaN"):
        Denoiser.load(path)


def test_optimizer_moments_of_another_shape_are_refused(model_file, tmp_path):
    from safetensors.torch import load, save

    with zipfile.ZipFile(model_file) as archive:
        moments = load(archive.read("training.safetensors"))
    key = min(moments)
    moments[key] = torch.zeros(3)
    path = edit_model(model_file, tmp_path / "moments.sdmodel", replace={"training.safetensors": save(moments)})
    with pytest.raises(ModelFileError, match="optimizer"):
        Denoiser.load(path)


def test_a_big_architecture_is_refused_before_it_is_built(model_file, tmp_path, digest):
    """features 2048 would build a 1.9 G parameter network (7.7 GB): refused in bounded memory, by the CLI."""
    path = edit_model(model_file, tmp_path / "big.sdmodel", _set("architecture.features", 2048))
    before = digest(path)
    done, _ = limited_run(["-m", "napari_selfdenoise.cli", "info", path], cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("selfdenoise: error:") and "features" in lines[0], lines
    assert digest(path) == before
    result = in_child(f"Denoiser.load({str(path)!r})", tmp_path)
    assert result.get("type") == "ModelFileError" and result["maxrss"] < PEAK_RSS_LIMIT, result


def test_a_network_with_too_many_parameters_is_refused(model_file, tmp_path):
    """Each size in range, the product not: the parameters are counted (on the meta device) first."""
    def edit(header):
        header["architecture"].update(features=512, depth=6)
        header["config"].update(features=512, depth=6, patch=64)
    path = edit_model(model_file, tmp_path / "wide.sdmodel", edit)
    with pytest.raises(ModelFileError, match="million parameters"):
        Denoiser.load(path)


# ------------------------------------------------------------------------------- rdf.yaml descriptions


@pytest.fixture(scope="module")
def package(model_file, tmp_path_factory):
    return Denoiser.load(model_file).export_bmz(tmp_path_factory.mktemp("package") / "ours.zip")


def foreign(package, target, edit=None, rdf_text: str | None = None, flag_encrypted: str | None = None,
            replace: dict | None = None):
    """Our package as someone else's, runnable without trusting code: no native file, no config, only the
    pytorch_state_dict weights. ``edit(rdf)`` changes the description, ``replace`` entries (their sha256
    in the description follows); ``flag_encrypted`` sets the encryption bit of that entry."""
    replace = replace or {}
    with zipfile.ZipFile(package) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
        rdf = yaml.safe_load(old.read("rdf.yaml"))
        rdf["attachments"], rdf["config"] = [], {}
        rdf["weights"].pop("torchscript")
        if "weights.pt" in replace:
            rdf["weights"]["pytorch_state_dict"]["sha256"] = hashlib.sha256(replace["weights.pt"]).hexdigest()
        if edit is not None:
            edit(rdf)
        new.writestr("rdf.yaml", rdf_text if rdf_text is not None else yaml.safe_dump(rdf, sort_keys=False))
        for name in old.namelist():
            if name not in ("rdf.yaml", bmz.NATIVE, "weights_torchscript.pt"):
                new.writestr(name, replace.get(name, old.read(name)))
    if flag_encrypted:
        _set_encrypted_flag(target, flag_encrypted)
    return target


def _set_encrypted_flag(path, entry: str) -> None:
    """Set bit 0 (encrypted) of ``entry``'s general-purpose flags, in its local and central headers."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(entry)
    data[info.header_offset + 6] |= 1
    start = 0
    while True:  # the central record whose name is ``entry``
        central = data.find(b"PK\x01\x02", start)
        name_length = struct.unpack("<H", data[central + 28:central + 30])[0]
        if data[central + 46:central + 46 + name_length] == entry.encode():
            data[central + 8] |= 1
            break
        start = central + 4
    path.write_bytes(bytes(data))


def _step(where: str, step: dict):
    def edit(rdf):
        tensor = rdf["inputs"][0] if where == "pre" else rdf["outputs"][0]
        key = "preprocessing" if where == "pre" else "postprocessing"
        tensor[key] = [step] + list(tensor.get(key) or [])
    return edit


def _space_size(size):
    def edit(rdf):
        axis = next(a for a in rdf["inputs"][0]["axes"] if a.get("id") == "y")
        axis["size"] = size
    return edit


def _architecture(**changes):
    def edit(rdf):
        rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"].update(changes)
    return edit


RDF_LIES = {
    "bogus ensure_dtype": (_step("pre", {"id": "ensure_dtype", "kwargs": {"dtype": "quaternion"}}), "dtype"),
    "object ensure_dtype": (_step("post", {"id": "ensure_dtype", "kwargs": {"dtype": "object"}}), "dtype"),
    "gain as text": (_step("pre", {"id": "scale_linear", "kwargs": {"gain": "twice", "offset": 0}}), "gain"),
    "gain NaN": (_step("pre", {"id": "scale_linear", "kwargs": {"gain": float("nan")}}), "gain"),
    "percentile 150": (_step("pre", {"id": "scale_range", "kwargs": {"max_percentile": 150}}), "percentile"),
    "percentiles reversed": (_step("pre", {"id": "scale_range", "kwargs": {"min_percentile": 90,
                                                                           "max_percentile": 10}}), "percentile"),
    "missing mean": (_step("pre", {"id": "fixed_zero_mean_unit_variance", "kwargs": {"std": 1.0}}), "mean"),
    "std as text": (_step("pre", {"id": "fixed_zero_mean_unit_variance", "kwargs": {"mean": 0, "std": "x"}}), "std"),
    "eps negative": (_step("pre", {"id": "zero_mean_unit_variance", "kwargs": {"eps": -1}}), "eps"),
    "clip min above max": (_step("post", {"id": "clip", "kwargs": {"min": 5, "max": 1}}), "min"),
    "kwargs a list": (_step("pre", {"id": "clip", "kwargs": [1, 2]}), "kwargs"),
    "axes a number": (_step("pre", {"id": "zero_mean_unit_variance", "kwargs": {"axes": 3}}), "axes"),
    "min 0 step 0": (_space_size({"min": 0, "step": 0}), "size"),
    "negative step": (_space_size({"min": 16, "step": -4}), "step"),
    "a billion pixels": (_space_size(10**9), "size"),
    "shape a string": (_space_size("sixteen"), "not understood"),
    "features 2048 in the state dict's architecture": (_architecture(features=2048), "features"),
    "depth as text in the state dict's architecture": (_architecture(depth="2"), "depth"),
}


@pytest.mark.parametrize("case", sorted(RDF_LIES))
def test_description_lies_are_one_error_at_load(package, tmp_path, case):
    """Refused when the package is opened (not later, in the middle of a prediction)."""
    edit, message = RDF_LIES[case]
    path = foreign(package, tmp_path / "lie.zip", edit)
    with pytest.raises(ModelFileError, match=message) as info:
        Denoiser.load(path)
    one_line(info.value)


def test_a_network_that_fails_on_the_described_tiles_is_one_error(package, tmp_path):
    """Sizes 17 + 8k fit the description but not the network's pooling: its forward raises inside torch;
    predict says so in one line (the TorchScript child's failures are covered by test_trust.py)."""
    path = foreign(package, tmp_path / "odd.zip", _space_size({"min": 17, "step": 8}))
    model = Denoiser.load(path)
    with pytest.raises(ModelFileError, match="failed on a tile") as info:
        model.predict(noisy())
    one_line(info.value)


def test_the_untouched_foreign_copy_predicts(package, tmp_path):
    """The cases above differ from a working package only by their lie."""
    model = Denoiser.load(foreign(package, tmp_path / "fine.zip"))
    assert np.isfinite(model.predict(noisy())).all()


BILLION_LAUGHS = "lol0: &lol0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * 9)}]\n" for i in range(1, 10))


def test_yaml_billion_laughs_is_refused_in_bounded_memory(package, tmp_path, digest):
    """A 1 KB rdf.yaml whose aliases stand for 9**10 strings: refused while it is measured, not built."""
    rdf = yaml.safe_dump({k: v for k, v in yaml.safe_load(zipfile.ZipFile(package).read("rdf.yaml")).items()
                          if k != "description"}, sort_keys=False)
    text = BILLION_LAUGHS + rdf + "description: *lol9\n"
    path = foreign(package, tmp_path / "laughs.zip", rdf_text=text)
    before = digest(path)
    done, _ = limited_run(["-m", "napari_selfdenoise.cli", "info", path], cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("selfdenoise: error:") and "alias" in lines[0], lines
    assert digest(path) == before
    result = in_child(f"Denoiser.load({str(path)!r})", tmp_path)
    assert result.get("type") == "ModelFileError" and "alias" in result["message"], result
    assert result["maxrss"] < PEAK_RSS_LIMIT, result


def test_recursive_yaml_alias_is_refused(package, tmp_path):
    path = foreign(package, tmp_path / "loop.zip", rdf_text="a: &a [1, *a]\ntype: model\n")
    with pytest.raises(ModelFileError, match="recursive"):
        Denoiser.load(path)


@pytest.mark.parametrize("entry", ["rdf.yaml", "weights.pt"])
def test_encrypted_zip_entries_are_refused(package, tmp_path, entry, run_cli, one_line_error):
    path = foreign(package, tmp_path / "locked.zip", flag_encrypted=entry)
    with pytest.raises(ModelFileError, match="encrypted"):
        Denoiser.load(path)
    if entry == "rdf.yaml":
        one_line_error(run_cli("info", path, cwd=tmp_path), "encrypted")


def test_state_dict_weights_with_a_stride_trick_in_a_package(package, tmp_path):
    """The pytorch_state_dict route of a package goes through the same checks."""
    weights = state_archive(state_pickle({"net.w": tensor_op(numel=1, size=(20000, 16000), stride=(0, 0))}),
                            {"0": floats(1)})
    rebuilt = foreign(package, tmp_path / "stride.zip", replace={"weights.pt": weights})
    with pytest.raises(ModelFileError, match="stride-0"):
        Denoiser.load(rebuilt)


# ---------------------------------------------------------------------------------- images and options


def test_zarr_chunk_that_is_not_zlib_data(model_file, tmp_path, run_cli, one_line_error, digest):
    """One bad chunk among 64: zarr's other chunk reads are still running when it fails, and must not
    print asyncio noise ("Task was destroyed but it is pending!") under the one-line error at exit."""
    zarr = pytest.importorskip("zarr")
    numcodecs = pytest.importorskip("numcodecs")
    store = tmp_path / "image.zarr"
    array = zarr.open_array(str(store), mode="w", shape=(512, 512), chunks=(64, 64), dtype="f4", zarr_format=2,
                            compressor=numcodecs.Zlib())
    array[:] = noisy((512, 512))
    (store / "1.1").write_bytes(b"this is not zlib data" * 8)
    before = digest(store / "1.1")
    for lazy in (False, True):
        with pytest.raises(SelfDenoiseError, match="image.zarr") as info:
            image = read_image(store, axes="YX", lazy=lazy)
            np.asarray(image.data)
        one_line(info.value)
    for command in (["predict", model_file, store, "--axes", "YX", "--out", tmp_path / "out.tif"],
                    ["train", store, "--axes", "YX", "--method", "n2v2", "--steps", "2", "--patch", "32",
                     "--batch", "2", "--features", "4", "--out", tmp_path / "m.sdmodel"]):
        one_line_error(run_cli(*command, cwd=tmp_path), "image.zarr")
    assert digest(store / "1.1") == before
    assert not (tmp_path / "out.tif").exists() and not (tmp_path / "m.sdmodel").exists()


def test_truncated_tiff_at_predict(model_file, tmp_path, run_cli, one_line_error, digest):
    """Predict reads TIFFs lazily (page by page), train reads them now: both say the file is truncated."""
    import tifffile

    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, np.stack([noisy((128, 128), seed=s) for s in range(4)]))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    before = digest(path)
    one_line_error(run_cli("predict", model_file, path, "--axes", "TYX", "--out", tmp_path / "out.tif",
                           cwd=tmp_path), "truncated")
    with pytest.raises(SelfDenoiseError, match="truncated"):
        read_image(path, axes="TYX", lazy=True, dask=True)
    assert digest(path) == before and not (tmp_path / "out.tif").exists()


@pytest.mark.parametrize("option, value", [("--time-limit", "nan"), ("--lr", "nan"), ("--lr", "inf"),
                                           ("--lr", "-1"), ("--time-limit", "inf")])
def test_cli_refuses_non_finite_budgets_and_rates(tmp_path, run_cli, one_line_error, option, value):
    image = tmp_path / "image.npy"
    np.save(image, noisy())
    one_line_error(run_cli("train", image, "--axes", "YX", "--method", "n2v2", option, value, "--steps", "2",
                           "--out", tmp_path / "m.sdmodel", cwd=tmp_path), option.lstrip("-").replace("-", "_"))
    assert not (tmp_path / "m.sdmodel").exists()


@pytest.mark.parametrize("options", [dict(time_limit=float("nan")), dict(lr=float("nan")), dict(lr=float("inf")),
                                     dict(lr=-1.0), dict(lr=0.0), dict(time_limit=-3), dict(steps="5"),
                                     dict(patch=32.5), dict(seed=-1), dict(val_fraction=float("nan")),
                                     dict(percentiles=(50, 10)), dict(features=4096), dict(depth=9),
                                     dict(amp="yes"), dict(method_options=[("grid", 2)])])
def test_train_config_refuses_bad_values(options):
    with pytest.raises(SelfDenoiseError) as info:
        TrainConfig(**options)
    assert next(iter(options)) in one_line(info.value)


@pytest.mark.parametrize("tile", [0, -4, 2.5, "big", (64, 0)])
def test_predict_refuses_bad_tiles(model_file, package, tmp_path, tile):
    image = noisy()
    for model in (Denoiser.load(model_file), Denoiser.load(foreign(package, tmp_path / "f.zip"))):
        with pytest.raises(SelfDenoiseError, match="tile") as info:
            model.predict(image, tile=tile)
        one_line(info.value)


# ------------------------------------------------------------------------------------------- fuzzing

ALLOWED = (ModelFileError, SelfDenoiseError)


def _mutations(rng: random.Random, data: bytes, count: int):
    """Seeded byte-level mutations: flips, overwrites with interesting values, cuts, duplications."""
    interesting = [b"\x00", b"\xff", b"\x7f", b"\x80", b"J\xff\xff\xff\xff", b"\x8a\x08" + b"\xff" * 8, b"h\x63",
                   b"s", b"u", b"t", b"R", b"Q", b"."]
    for _ in range(count):
        buffer = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            kind = rng.random()
            at = rng.randrange(len(buffer))
            if kind < 0.4:
                buffer[at] ^= 1 << rng.randrange(8)
            elif kind < 0.7:
                piece = rng.choice(interesting)
                buffer[at:at + len(piece)] = piece
            elif kind < 0.85:
                del buffer[at:at + rng.randint(1, 16)]
            else:
                buffer[at:at] = buffer[at:at + rng.randint(1, 16)]
        yield bytes(buffer)


def test_fuzzed_state_dicts_raise_only_model_file_errors(tmp_path):
    """200 seeded mutations of a real torch.save state dict's pickle: a state dict, or ModelFileError.
    Run in a child with capped memory, which reports the exception types and its peak memory."""
    state = {"conv.weight": torch.randn(4, 1, 3, 3), "conv.bias": torch.randn(4), "steps": torch.tensor(3),
             "t": torch.randn(3, 2).t()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    source = tmp_path / "state.pt"
    source.write_bytes(buffer.getvalue())
    code = f"""
        import io, random, zipfile, collections
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_hostile_files import _mutations
        from napari_selfdenoise.core.errors import ModelFileError
        data = open({str(source)!r}, "rb").read()
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = {{n: archive.read(n) for n in archive.namelist()}}
        pickle_name = next(n for n in entries if n.endswith("data.pkl"))
        outcomes = collections.Counter()
        rng = random.Random(13)
        for mutated in _mutations(rng, entries[pickle_name], 200):
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w") as archive:
                for name, payload in entries.items():
                    archive.writestr(name, mutated if name == pickle_name else payload)
            try:
                read_state_dict(buffer.getvalue(), "weights.pt")
                outcomes["read"] += 1
            except ModelFileError as err:
                assert "\\n" not in str(err), str(err)
                outcomes["ModelFileError"] += 1
            except BaseException as err:
                outcomes[type(err).__name__ + ": " + str(err)[:100]] += 1
        for mutated in _mutations(rng, data, 100):  # the whole archive too
            try:
                read_state_dict(mutated, "weights.pt")
                outcomes["read"] += 1
            except ModelFileError:
                outcomes["ModelFileError"] += 1
            except BaseException as err:
                outcomes[type(err).__name__ + ": " + str(err)[:100]] += 1
        result = dict(outcomes)
    """
    result = in_child(code, tmp_path)
    maxrss = result.pop("maxrss")
    assert set(result) <= {"read", "ModelFileError"}, result
    assert result.get("ModelFileError", 0) > 100, result  # the mutations do reach the interpreter
    assert maxrss < PEAK_RSS_LIMIT, maxrss


def _random_value(rng: random.Random):
    return rng.choice([None, True, -1, 0, 2**70, 1e308, float("nan"), "x", "", [], {}, [1, "a"], {"a": 1},
                       [[[[]]]], 10**6, -10**6, 0.5])


def _leaves(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(node, list) and node and len(node) < 50:
        for index, value in enumerate(node):
            yield from _leaves(value, (*path, index))
    yield path


def _replace(node, path, value):
    """Set the value at ``path``, unless an earlier mutation replaced a parent by something else."""
    for key in path[:-1]:
        if not isinstance(node, (dict, list)) or (isinstance(node, list) and not (isinstance(key, int)
                                                                               and key < len(node))):
            return
        if isinstance(node, dict) and key not in node:
            return
        node = node[key]
    if isinstance(node, dict) or (isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node)):
        node[path[-1]] = value


def test_fuzzed_headers_and_descriptions_raise_only_our_errors(model_file, package, tmp_path):
    """200 seeded header mutations (a random field set to a random value of another type) and 200 of a
    foreign package's rdf.yaml: loading (and, when it loads, predicting) raises only our error types."""
    rng = random.Random(7)
    image = noisy()
    with zipfile.ZipFile(model_file) as archive:
        header = json.loads(archive.read("selfdenoise.json"))
    paths = [p for p in _leaves(header) if p]
    outcomes: dict[str, int] = {}
    for i in range(200):
        mutated = json.loads(json.dumps(header))
        for _ in range(rng.randint(1, 3)):
            _replace(mutated, rng.choice(paths), _random_value(rng))
        text = json.dumps(mutated)
        path = edit_model(model_file, tmp_path / "fuzz.sdmodel", lambda h, text=text: text)
        key = _outcome(path, image)
        outcomes[key] = outcomes.get(key, 0) + 1
    rdf = yaml.safe_load(zipfile.ZipFile(foreign(package, tmp_path / "base.zip")).read("rdf.yaml"))
    paths = [p for p in _leaves(rdf) if p]
    for i in range(200):
        mutated = json.loads(json.dumps(rdf))
        for _ in range(rng.randint(1, 2)):
            _replace(mutated, rng.choice(paths), _random_value(rng))
        text = yaml.safe_dump(mutated)
        path = foreign(package, tmp_path / "fuzz.zip", rdf_text=text)
        key = _outcome(path, image)
        outcomes[key] = outcomes.get(key, 0) + 1
    assert set(outcomes) <= {"loaded", "ModelFileError", "SelfDenoiseError"}, outcomes
    assert outcomes.get("ModelFileError", 0) > 100, outcomes


def _outcome(path, image) -> str:
    try:
        model = Denoiser.load(path)
        model.predict(image)
        return "loaded"
    except (ModelFileError, SelfDenoiseError) as err:
        one_line(err)
        return type(err).__name__
    except Exception as err:  # noqa: BLE001 - the test reports what escaped
        return f"{type(err).__name__}: {str(err)[:120]}"
