"""The trust boundary for foreign bioimage.io packages (issue 13, "Critical").

TorchScript weights are a program written by the package's author. These tests build the attacks
themselves: a scripted ``__setstate__`` that creates a file while the archive is loaded, a ``forward`` that
reads another file into its output, a flatbuffer module with a harmless zip appended, a ``.debug_pkl``
(and a stray pickle) naming a bad global, 200k nested lists in data.pkl, ``ops.prim.PythonOp`` in code/,
an inner zip bomb, a runaway allocation and a crash, and assert through the CLI (every command that loads
a model) and the API: nothing runs without trust (no canary file, exit code 2, one line, no traceback);
trusted code runs only in a child process that is bounded in memory, cannot open files, and whose crash is
one error in a parent that goes on."""

from __future__ import annotations

import io
import os
import pickle
import re
import resource
import signal
import subprocess
import sys
import time
import zipfile
from typing import Tuple  # noqa: UP035 - TorchScript needs typing.Tuple in __getstate__

import numpy as np
import pytest
import torch

from napari_selfdenoise.core import bmz
from napari_selfdenoise.core.denoiser import Denoiser
from napari_selfdenoise.core.errors import ModelFileError, SelfDenoiseError, UntrustedCodeError
from napari_selfdenoise.core.trust import sandbox
from napari_selfdenoise.core.trust.safetorch import check_pickle_depth, check_torchscript
from napari_selfdenoise.core.trust.sandbox import ModelProcess

GiB = 1024**3


# ------------------------------------------------------------------------------------------- attacks


class Doubler(torch.nn.Module):
    """A benign foreign model: 2x + 1."""

    def forward(self, x):
        return x * 2.0 + 1.0


class WritesOnLoad(torch.nn.Module):
    """Its scripted ``__setstate__`` runs inside ``torch.jit.load`` and creates (and sizes) a file."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.buffer = torch.zeros(1)

    def forward(self, x):
        return x

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool]:  # noqa: UP006
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool]) -> None:  # noqa: UP006
        self.path = state[0]
        self.training = state[1]
        self.buffer = torch.from_file(self.path, shared=True, size=16)


class ReadsAFile(torch.nn.Module):
    """Its ``forward`` reads another file into the "denoised" output (exfiltration)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x):
        secret = torch.from_file(self.path, shared=False, size=8, dtype=torch.uint8).float()
        return x * 0.0 + secret.sum()


class Allocates(torch.nn.Module):
    """Its ``forward`` asks for ``gib`` GiB at once."""

    def __init__(self, gib: int):
        super().__init__()
        self.numel = gib * GiB // 4

    def forward(self, x):
        big = torch.ones(self.numel, dtype=torch.float32)
        return x + big[0]


def scripted(module: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


def rewrite(archive: bytes, change=None, add: dict | None = None) -> bytes:
    """The TorchScript archive with entries changed by ``change(name, data) -> data`` and entries added."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as old, zipfile.ZipFile(out, "w") as new:
        prefix = old.namelist()[0].split("/")[0]
        for name in old.namelist():
            data = old.read(name)
            new.writestr(name, change(name, data) if change else data)
        for name, data in (add or {}).items():
            new.writestr(f"{prefix}/{name}", data, compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


class SystemPayload:
    """Unpickled by Python, this runs ``touch <path>``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))


def flatbuffer_polyglot() -> bytes:
    """A flatbuffer TorchScript module (what torch loads: it checks bytes 4..8 for PTMF first) with a
    harmless TorchScript zip appended (what Python's zipfile sees)."""
    module = torch.jit.script(Doubler())
    flatbuffer = bytes(torch._C._save_jit_module_to_bytes(module._c, {}))
    assert flatbuffer[4:8] == b"PTMF"
    polyglot = flatbuffer + scripted(Doubler())
    assert zipfile.is_zipfile(io.BytesIO(polyglot))
    return polyglot


def debug_pickle_payload(canary) -> bytes:
    evil = pickle.dumps(SystemPayload(canary), protocol=2)
    return rewrite(scripted(Doubler()), lambda name, data: evil if name.endswith(".debug_pkl") else data)


def stray_pickle_payload(canary) -> bytes:
    """A pickle under a name that ends neither in .pkl nor .debug_pkl."""
    return rewrite(scripted(Doubler()), add={"extra/notes": pickle.dumps(SystemPayload(canary), protocol=2)})


def nested_lists(depth: int = 200_000) -> bytes:
    evil = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
    return rewrite(scripted(Doubler()), lambda name, data: evil if name.endswith("/data.pkl") else data)


def python_op() -> bytes:
    def change(name, data):
        if name.endswith(".py") and "/code/" in f"/{name}":
            return data.replace(b"return", b"_0 = ops.prim.PythonOp(x)\n    return", 1)
        return data
    return rewrite(scripted(Doubler()), change)


def inner_zip_bomb() -> bytes:
    """1 GiB of zeros deflated into about 1 MB, as a storage entry of the archive."""
    out = io.BytesIO(scripted(Doubler()))
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        prefix = archive.namelist()[0].split("/")[0]
        with archive.open(f"{prefix}/data/99", "w", force_zip64=True) as entry:
            chunk = bytes(16 * 1024**2)
            for _ in range(GiB // len(chunk)):
                entry.write(chunk)
    data = out.getvalue()
    assert len(data) < 2 * 1024**2
    return data


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "image.npy"
    array = np.random.default_rng(0).random((32, 40), dtype=np.float32)
    np.save(path, array)
    return path, array


@pytest.fixture
def writes_on_load(tmp_path, canary, foreign_package):
    return foreign_package(tmp_path / "setstate.zip", scripted(WritesOnLoad(str(canary))))


def _loading_commands(package, image_path, tmp_path):
    return {
        "predict": ["predict", package, image_path, "--out", tmp_path / "out.ome.tif"],
        "noise": ["noise", package, image_path, "--out", tmp_path / "curve.csv"],
        "export": ["export", package, "--bmz", tmp_path / "again.zip"],
        "train --from": ["train", image_path, "--from", package, "--steps", "1", "--out", tmp_path / "m.sdmodel"],
    }


# ----------------------------------------------------------------------------- 1. trust is opt-in


def test_the_attack_is_live(tmp_path, foreign_package):
    """What every refusal below prevents: torch.jit.load alone creates the file."""
    target = tmp_path / "written-by-load"
    torch.jit.load(io.BytesIO(scripted(WritesOnLoad(str(target)))))
    assert target.exists()


@pytest.mark.parametrize("command", ["predict", "noise", "export", "train --from"])
def test_no_loading_command_runs_untrusted_code(command, writes_on_load, image, tmp_path, canary, run_cli,
                                                one_line_error, digest, tree_listing):
    before, listing = digest(image[0]), tree_listing(tmp_path)
    result = run_cli(*_loading_commands(writes_on_load, image[0], tmp_path)[command])
    pattern = r"foreign bioimage\.io model" if command in ("export", "train --from") else \
        r"setstate\.zip runs TorchScript code written by its author.*--trust-code.*trust_code=True.*Mallory Example"
    one_line_error(result, pattern)
    assert not canary.exists()
    assert digest(image[0]) == before and tree_listing(tmp_path) == listing  # nothing written


def test_info_describes_an_untrusted_package_without_loading_it(writes_on_load, canary, run_cli):
    result = run_cli("info", writes_on_load)
    assert result.rc == 0, result.stderr
    assert "someone else's model" in result.stdout and "a model from a stranger" in result.stdout
    assert re.search(r"weights:\s+TorchScript \(code\), not loaded", result.stdout), result.stdout
    assert not canary.exists()


def test_the_api_refuses_untrusted_code_and_says_how(writes_on_load, canary):
    with pytest.raises(UntrustedCodeError, match=r"trust_code=True.*Mallory Example") as info:
        Denoiser.load(writes_on_load)
    assert "\n" not in str(info.value) and info.value.author == "Mallory Example"
    described = Denoiser.load(writes_on_load, describe_untrusted=True)
    assert described.network is None
    with pytest.raises(UntrustedCodeError, match="not trusted"):
        described.predict(np.zeros((16, 16), np.float32))
    assert not canary.exists()


def test_trusted_code_runs_in_a_child_that_cannot_open_files(writes_on_load, image, tmp_path, canary, run_cli,
                                                            one_line_error):
    """With --trust-code the package's __setstate__ runs, but in a child process that may open no new
    files: the write fails there, and the parent reports it on one line."""
    result = run_cli("predict", writes_on_load, image[0], "--out", tmp_path / "out.ome.tif", "--trust-code")
    one_line_error(result, r"the package's model failed while loading it")
    assert not canary.exists() and not (tmp_path / "out.ome.tif").exists()


def test_a_trusted_forward_cannot_read_another_file(tmp_path, image, run_cli, one_line_error, foreign_package):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"password")
    package = foreign_package(tmp_path / "reads.zip", scripted(ReadsAFile(str(secret))))
    with pytest.raises(UntrustedCodeError):
        Denoiser.load(package)
    model = Denoiser.load(package, trust_code=True)
    with pytest.raises(ModelFileError, match="failed while running it"):
        model.predict(image[1])
    result = run_cli("predict", package, image[0], "--out", tmp_path / "leak.ome.tif", "--trust-code")
    one_line_error(result, "failed while running it")
    assert not (tmp_path / "leak.ome.tif").exists()


def test_a_trusted_benign_package_predicts_in_a_child(tmp_path, image, run_cli, foreign_package):
    package = foreign_package(tmp_path / "doubler.zip", scripted(Doubler()))
    model = Denoiser.load(package, trust_code=True)
    assert model.network is None  # nothing of it lives in this process
    np.testing.assert_allclose(model.predict(image[1], tile=16), image[1] * 2 + 1, atol=1e-6)
    out = tmp_path / "doubled.npy"
    result = run_cli("predict", package, image[0], "--out", out, "--trust-code")
    assert result.rc == 0, result.stderr
    np.testing.assert_allclose(np.load(out), image[1] * 2 + 1, atol=1e-6)
    info = run_cli("info", package, "--trust-code")
    assert info.rc == 0 and "run in a separate memory-bounded process" in info.stdout, info.stdout


# ------------------------------------------------------------------ 4. defence in depth, trusted or not


ATTACKS = {
    "flatbuffer polyglot": (lambda canary: flatbuffer_polyglot(), r"flatbuffer"),
    "debug_pkl global": (debug_pickle_payload, r"debug_pkl.*system.*refusing"),
    "stray pickle": (stray_pickle_payload, r"extra/notes.*system.*refusing"),
    "200k nested lists": (lambda canary: nested_lists(), r"nests containers more than 1000 levels"),
    "ops.prim.PythonOp": (lambda canary: python_op(), r"PythonOp"),
    "inner zip bomb": (lambda canary: inner_zip_bomb(), r"data/99 is implausibly large"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_crafted_torchscript_is_refused_even_when_trusted(attack, tmp_path, image, canary, run_cli,
                                                          one_line_error, foreign_package):
    build, message = ATTACKS[attack]
    weights = build(canary)
    with pytest.raises(ModelFileError, match=message):
        check_torchscript(weights, "model.pt")
    package = foreign_package(tmp_path / "crafted.zip", weights)
    with pytest.raises(UntrustedCodeError):
        Denoiser.load(package)
    with pytest.raises(ModelFileError, match=message):
        Denoiser.load(package, trust_code=True)
    result = run_cli("predict", package, image[0], "--out", tmp_path / "out.ome.tif", "--trust-code")
    one_line_error(result, message)
    assert not canary.exists() and not (tmp_path / "out.ome.tif").exists()


def test_the_nesting_count_sees_through_the_memo():
    """Nesting built by putting each new list into the one before it, fetched back from the memo (so no
    run of EMPTY_LIST opcodes shows it), is counted too; our own exported TorchScript passes."""
    depth = 1500
    ops = [b"\x80\x02", b"]", b"q\x00"]  # list 0, memoised
    for i in range(1, depth):
        ops += [b"h" + bytes([(i - 1) % 256]) if i - 1 < 256 else b"j" + (i - 1).to_bytes(4, "little"),
                b"]", b"r" + i.to_bytes(4, "little"), b"a", b"0"]  # get list i-1, new list i, append, pop
    ops += [b"h\x00", b"."]
    payload = b"".join(ops)
    with pytest.raises(ModelFileError, match="more than 1000 levels"):
        check_pickle_depth(payload, "memo.pkl")
    check_pickle_depth(pickle.dumps([[1, [2]], {"a": (3,)}], protocol=2), "fine.pkl")
    cycle = b"\x80\x02]q\x00h\x00a."  # a list that contains itself
    with pytest.raises(ModelFileError, match="contains itself"):
        check_pickle_depth(cycle, "cycle.pkl")


# ------------------------------------------------------------- 2. every file checked against the rdf


@pytest.fixture(scope="module")
def our_package(tmp_path_factory):
    from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image

    noisy = add_noise(fluorescence_image((48, 48), seed=1), sigma=0.1, seed=2)
    model = Denoiser("n2v2", "YX", steps=2, patch=32, batch=2, features=4, depth=1, steps_per_epoch=2,
                     seed=0, device="cpu").fit(noisy)
    return bmz.export_bmz(model, tmp_path_factory.mktemp("ours") / "ours.zip")


def _edited(source, target, entry=None, drop_sha=None):
    import yaml

    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        rdf = yaml.safe_load(old.read("rdf.yaml"))
        if drop_sha:
            rdf["weights"][drop_sha].pop("sha256")
        new.writestr("rdf.yaml", yaml.safe_dump(rdf))
        for name in old.namelist():
            if name != "rdf.yaml":
                data = old.read(name)
                new.writestr(name, data + b"\0" if name == entry else data)
    return target


@pytest.mark.parametrize("entry", ["weights_torchscript.pt", "weights.pt"])
def test_an_edited_weights_file_in_our_package_is_refused(our_package, tmp_path, entry, image, run_cli,
                                                          one_line_error):
    assert Denoiser.load(our_package).trainable  # ours loads without trust: its weights are data
    edited = _edited(our_package, tmp_path / "edited.zip", entry=entry)
    with pytest.raises(ModelFileError, match=f"{entry} does not match its sha256"):
        Denoiser.load(edited)
    one_line_error(run_cli("predict", edited, image[0], "--out", tmp_path / "o.ome.tif"), "sha256")


@pytest.mark.parametrize("kind", ["torchscript", "pytorch_state_dict"])
def test_our_package_without_a_sha256_is_refused(our_package, tmp_path, kind):
    with pytest.raises(ModelFileError, match="no sha256"):
        Denoiser.load(_edited(our_package, tmp_path / "nosha.zip", drop_sha=kind))


def test_a_foreign_package_may_omit_sha256_but_not_lie(tmp_path, foreign_package):
    weights = scripted(Doubler())
    assert Denoiser.load(foreign_package(tmp_path / "nosha.zip", weights, sha256=False), trust_code=True)
    lying = foreign_package(tmp_path / "lies.zip", weights,
                            rdf_extra={"weights": {"torchscript": {"source": "model.pt", "sha256": "0" * 64}}})
    with pytest.raises(ModelFileError, match="does not match its sha256"):
        Denoiser.load(lying)  # checked before trust is even asked for


# ------------------------------------------------------------------------- 3. the bounded child process


def test_a_crash_while_loading_is_one_error_and_the_parent_goes_on():
    """200k nested lists really segfault torch.jit.load (here in the child, unchecked on purpose)."""
    with pytest.raises(ModelFileError, match=r"crashed \(signal 11, SIGSEGV\) while loading it") as info:
        ModelProcess(nested_lists(), "nested.pt")
    assert "\n" not in str(info.value)
    with ModelProcess(scripted(Doubler()), "ok.pt") as child:  # the parent is fine
        np.testing.assert_array_equal(child.run(np.ones((1, 1, 8, 8), np.float32)), 3 * np.ones((1, 1, 8, 8)))


def test_a_crash_while_predicting_is_one_error(tmp_path, foreign_package, monkeypatch, image):
    model = Denoiser.load(foreign_package(tmp_path / "doubler.zip", scripted(Doubler())), trust_code=True)
    run = ModelProcess.run

    def crash_first(self, tile):
        os.kill(self.pid, signal.SIGSEGV)
        self._process.wait()
        return run(self, tile)

    monkeypatch.setattr(ModelProcess, "run", crash_first)
    with pytest.raises(ModelFileError, match=r"crashed \(signal 11, SIGSEGV\) while running it"):
        model.predict(image[1])
    monkeypatch.setattr(ModelProcess, "run", run)
    np.testing.assert_allclose(model.predict(image[1]), image[1] * 2 + 1, atol=1e-6)


def test_the_childs_memory_is_bounded(tmp_path, foreign_package, monkeypatch, image):
    small = Denoiser.load(foreign_package(tmp_path / "3g.zip", scripted(Allocates(3))), trust_code=True)
    monkeypatch.setenv(sandbox.MEMORY_ENV, "2")
    with pytest.raises(ModelFileError, match=r"failed while running it.*alloc.*2\.0 GiB"):
        small.predict(image[1])  # the limit works (checked first with sizes this machine can afford)
    monkeypatch.delenv(sandbox.MEMORY_ENV)
    assert sandbox.memory_limit() <= 8 * GiB
    parent_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    huge = Denoiser.load(foreign_package(tmp_path / "20g.zip", scripted(Allocates(20))), trust_code=True)
    with pytest.raises(ModelFileError, match=r"failed while running it.*alloc"):
        huge.predict(image[1])
    children_peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert children_peak_kib * 1024 < 8 * GiB  # no child ever held more than the limit
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - parent_peak < 512 * 1024  # KiB: < 512 MiB


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan"])
def test_a_bad_memory_setting_is_one_line(value, monkeypatch, tmp_path, image, run_cli, one_line_error,
                                          foreign_package):
    monkeypatch.setenv(sandbox.MEMORY_ENV, value)
    with pytest.raises(SelfDenoiseError, match=sandbox.MEMORY_ENV):
        sandbox.memory_limit()
    if value == "abc":
        package = foreign_package(tmp_path / "doubler.zip", scripted(Doubler()))
        result = run_cli("predict", package, image[0], "--out", tmp_path / "o.npy", "--trust-code",
                         env={sandbox.MEMORY_ENV: value})
        one_line_error(result, sandbox.MEMORY_ENV)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return any(line.startswith("State:") and "Z" in line.split()[1] for line in status)
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("how", ["exits", "is killed"])
def test_the_child_does_not_outlive_its_parent(how, tmp_path):
    weights = tmp_path / "doubler.pt"
    weights.write_bytes(scripted(Doubler()))
    script = ("import os, signal, sys\n"
              "from napari_selfdenoise.core.trust.sandbox import ModelProcess\n"
              "child = ModelProcess(open(sys.argv[1], 'rb').read(), 'doubler')\n"
              "print(child.pid, flush=True)\n"
              + ("os._exit(0)\n" if how == "exits" else "os.kill(os.getpid(), signal.SIGKILL)\n"))
    parent = subprocess.run([sys.executable, "-c", script, str(weights)], capture_output=True, text=True,
                            timeout=600, check=False)
    pid = int(parent.stdout.split()[0])
    for _ in range(600):  # a safety net against a hang, not a timing assertion
        if _gone(pid):
            break
        time.sleep(0.1)
    assert _gone(pid), f"the child {pid} outlived its parent"


def test_only_the_child_process_loads_torchscript():
    """A guard on the code itself: torch's TorchScript loaders appear in core/trust/sandbox.py only."""
    from pathlib import Path

    import napari_selfdenoise

    root = Path(napari_selfdenoise.__file__).parent
    loaders = ("jit.load(", "_load_for_lite_interpreter", "_load_jit_module_from", "_load_mobile_module_from",
               "torch._C.import_ir_module")
    for path in root.rglob("*.py"):
        if path.name == "sandbox.py":
            continue
        code = "\n".join(line.split("#")[0] for line in path.read_text(encoding="utf-8").splitlines())
        code = re.sub(r'"""[\s\S]*?"""', "", code)  # docstrings may name them
        for loader in loaders:
            assert loader not in code, f"{path.name} calls {loader}: TorchScript must load in the child only"


# ---------------------------------------------------------------- 5. ONNX: runs without trust, if safe


def onnx_model(secret_location: str | None = None, domain: str = "") -> bytes:
    """x * 2 + 1 as an ONNX graph; ``secret_location`` makes the constant 2 an external-data tensor read
    from that path; ``domain`` puts the Mul in another operator domain."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    two = numpy_helper.from_array(np.array([2.0], np.float32), "two")
    if secret_location is not None:
        two.ClearField("raw_data")
        two.data_location = TensorProto.EXTERNAL
        for key, value in (("location", secret_location), ("offset", "0"), ("length", "4")):
            entry = two.external_data.add()
            entry.key, entry.value = key, value
    one = numpy_helper.from_array(np.array([1.0], np.float32), "one")
    dims = ["b", "c", "y", "x"]
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["t"], domain=domain), helper.make_node("Add", ["t", "one"], ["y"])],
        "doubler", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)], [two, one])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model.SerializeToString()


def test_the_onnx_external_data_attack_is_live(tmp_path):
    """What check_onnx prevents: onnxruntime reads the external file into the model."""
    ort = pytest.importorskip("onnxruntime")
    (tmp_path / "secret.bin").write_bytes(np.array([7.0], np.float32).tobytes())
    (tmp_path / "model.onnx").write_bytes(onnx_model("secret.bin"))
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": np.ones((1, 1, 2, 2), np.float32)})[0]
    assert np.all(out == 8.0)  # 1 * 7 + 1: the secret's bytes are in the output


def test_an_onnx_package_runs_without_trust_in_the_child(tmp_path, image, run_cli, foreign_package):
    pytest.importorskip("onnxruntime")
    package = foreign_package(tmp_path / "onnx.zip", onnx_model(), source="model.onnx", kind="onnx")
    model = Denoiser.load(package)  # no trust needed: standard operators, weights inside
    assert model.network is None  # runs in the child process
    np.testing.assert_allclose(model.predict(image[1], tile=16), image[1] * 2 + 1, atol=1e-6)
    out = tmp_path / "onnx.npy"
    result = run_cli("predict", package, image[0], "--out", out)
    assert result.rc == 0, result.stderr
    np.testing.assert_allclose(np.load(out), image[1] * 2 + 1, atol=1e-6)
    info = run_cli("info", package)
    assert info.rc == 0 and "ONNX" in info.stdout, info.stdout


@pytest.mark.parametrize("attack, message", [
    ("absolute external data", r"external file.*refusing"),
    ("relative external data", r"external file.*refusing"),
    ("custom operator domain", r"not a standard ONNX domain"),
])
def test_unsafe_onnx_is_refused(attack, message, tmp_path, image, run_cli, one_line_error, foreign_package):
    pytest.importorskip("onnxruntime")
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.array([7.0], np.float32).tobytes())
    weights = {"absolute external data": lambda: onnx_model(str(secret)),
               "relative external data": lambda: onnx_model("../secret.bin"),
               "custom operator domain": lambda: onnx_model(domain="com.microsoft")}[attack]()
    package = foreign_package(tmp_path / "bad-onnx.zip", weights, source="model.onnx", kind="onnx")
    with pytest.raises(ModelFileError, match=message):
        Denoiser.load(package, trust_code=True)  # not even trust runs it
    one_line_error(run_cli("predict", package, image[0], "--out", tmp_path / "o.npy"), message)
    assert not (tmp_path / "o.npy").exists()
