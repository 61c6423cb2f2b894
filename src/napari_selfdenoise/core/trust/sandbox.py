"""Trusted TorchScript (and ONNX) runs here: in a child process, never in the napari or CLI process.

A foreign bioimage.io package's TorchScript weights are a program: ``torch.jit.load`` runs the module's
scripted ``__setstate__``, prediction runs its ``forward``, and either can create, read or write files
(``torch.from_file``) or crash torch. They are run only when the user trusts the package
(``trust_code=True``, ``--trust-code``, the Apply widget's confirmation), and then by ``ModelProcess``
(which also runs ONNX models, checked by ``safeonnx.check_onnx``, through onnxruntime on the CPU):

- the child is ``python -m napari_selfdenoise.core.trust.sandbox``; load and forward happen there, tiles go over
  its stdin/stdout pipes as framed messages (a JSON header, then raw float32 bytes), every size checked
  before it is read;
- a crash (a segfault), a failed allocation or an exception in the child ends in one ``ModelFileError``
  in the parent, which goes on running;
- on the CPU the child's address space is capped with ``RLIMIT_AS`` (``SELFDENOISE_CHILD_MEMORY_GB``,
  default min(8 GiB, 75 % of the RAM)); on CUDA, where the driver reserves far more address space than it
  uses, that limit cannot work, so the child caps the GPU memory instead
  (``torch.cuda.set_per_process_memory_fraction``: the same number of GiB, or 75 % of the GPU when the
  variable is unset) and host memory is not capped;
- on the CPU, once torch is imported and warmed up and before the package is parsed, the child may open
  no new file descriptors (``RLIMIT_NOFILE`` at the lowest free one): the model's code cannot open files or
  sockets. This is hardening, not a sandbox (trust is still what decides);
- the limits are enforced on Linux; elsewhere the child only keeps crashes out of the parent;
- the child ends when the parent closes it (``close()``, ``with``), when its stdin closes (the parent
  exited) and, on Linux, when the parent dies (``PR_SET_PDEATHSIG``): no orphans.
"""

from __future__ import annotations

import io
import json
import math
import os
import signal
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..errors import ModelFileError, SelfDenoiseError

MEMORY_ENV = "SELFDENOISE_CHILD_MEMORY_GB"
_DEFAULT_MEMORY = 8 * 1024**3
_FRAME = struct.Struct("<IQ")  # header bytes, payload bytes
_MAX_HEADER = 64 * 1024
_MAX_WEIGHTS = 2 * 1024**3  # modelfile's limit for one entry
_MAX_TILE = 2 * 1024**3
_OUTPUT_FACTOR = 16  # an image-to-image model's output: at most 16x the tile's bytes (channels)
_EXIT_WAIT = 10.0


def memory_limit() -> int:
    """Bytes the child may use: ``SELFDENOISE_CHILD_MEMORY_GB`` GiB, else min(8 GiB, 75 % of the RAM)."""
    text = os.environ.get(MEMORY_ENV, "").strip()
    if text:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise SelfDenoiseError(f"{MEMORY_ENV}={text!r} is not a positive number of GiB; e.g. {MEMORY_ENV}=8")
        return int(value * 1024**3)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return _DEFAULT_MEMORY
    return int(min(_DEFAULT_MEMORY, 0.75 * ram))


class _ProtocolError(Exception):
    """The other side sent something we refuse to read (too large, not a frame)."""


def _send(stream, header: dict, payload=b"") -> None:
    head = json.dumps(header).encode("utf-8")
    body = memoryview(payload).cast("B")  # bytes or a C-contiguous array, without a copy
    stream.write(_FRAME.pack(len(head), len(body)))
    stream.write(head)
    stream.write(body)
    stream.flush()


def _read_exact(stream, size: int) -> bytes | None:
    data = stream.read(size) if size else b""
    if data is None or len(data) < size:
        return None
    return data


def _receive(stream, max_payload: int) -> tuple[dict, bytes] | None:
    """One message, or None when the stream ended (the other side closed it or died)."""
    frame = _read_exact(stream, _FRAME.size)
    if frame is None:
        return None
    head_size, payload_size = _FRAME.unpack(frame)
    if head_size > _MAX_HEADER:
        raise _ProtocolError(f"a message header of {head_size} bytes")
    if payload_size > max_payload:
        raise _ProtocolError(f"a message of {payload_size} bytes (at most {max_payload} expected)")
    head = _read_exact(stream, head_size)
    payload = _read_exact(stream, payload_size)
    if head is None or payload is None:
        return None
    try:
        header = json.loads(head.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _ProtocolError("a message header that is not JSON") from err
    if not isinstance(header, dict):
        raise _ProtocolError("a message header that is not a JSON object")
    return header, payload


# ============================================================================================== parent


class ModelProcess:
    """A child process that loads ``weights`` (a TorchScript archive, or with ``kind="onnx"`` an ONNX
    model run by onnxruntime on the CPU) on ``device`` and runs tiles.

    ``name`` names the weights in messages. Use as a context manager (or call ``close()``)."""

    def __init__(self, weights: bytes, name: str, device: str = "cpu", kind: str = "torchscript"):
        import torch

        self.name = name
        self.device = "cpu" if kind == "onnx" else str(device)
        limit = memory_limit()
        self._memory = limit
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - the child writes it; closed in close()
        source_root = str(Path(__file__).resolve().parents[3])  # the folder that holds napari_selfdenoise
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (source_root, env.get("PYTHONPATH", "")) if p)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "napari_selfdenoise.core.trust.sandbox", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env, close_fds=True)
        try:
            self._request({"op": "load", "kind": kind, "device": self.device, "memory": limit,
                           "threads": torch.get_num_threads()}, weights, "loading it", _MAX_HEADER)
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int:
        return self._process.pid

    def run(self, tile: np.ndarray) -> np.ndarray:
        """The model's first output for one tile (float32, sent as raw bytes both ways)."""
        tile = np.ascontiguousarray(tile, dtype=np.float32)
        if tile.nbytes > _MAX_TILE:
            raise SelfDenoiseError(f"a tile of {tile.nbytes / 1024**3:.1f} GiB is too large; use a smaller tile")
        header, payload = self._request({"op": "run", "shape": list(tile.shape)}, tile, "running it",
                                        _OUTPUT_FACTOR * tile.nbytes + 16 * 1024**2)
        shape = header.get("shape")
        if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)
                and int(np.prod(shape, dtype=np.int64)) * 4 == len(payload)):
            self.close()
            raise ModelFileError(f"{self.name}: the package's model returned a malformed result; refusing it")
        return np.frombuffer(payload, dtype=np.float32).reshape(shape)

    def _request(self, header: dict, payload, doing: str, max_reply: int) -> tuple[dict, bytes]:
        try:
            _send(self._process.stdin, header, payload)
            reply = _receive(self._process.stdout, max_reply)
        except (BrokenPipeError, ConnectionError, ValueError):  # ValueError: a closed pipe
            reply = None
        except _ProtocolError as err:
            self.close()
            raise ModelFileError(f"{self.name}: the package's model sent {err} while {doing}; refusing it "
                                 "(an image-to-image model returns about its input's size)") from None
        if reply is None:
            raise self._died(doing)
        answer, data = reply
        if not answer.get("ok"):
            error = " ".join(str(answer.get("error") or "no details").split())[:300]
            hint = ""
            if "alloc" in error.lower() or "memory" in error.lower():
                hint = (f"; its process may use {self._memory / 1024**3:.1f} GiB (set {MEMORY_ENV} to allow "
                        "more, or use smaller tiles)")
            raise ModelFileError(f"{self.name}: the package's model failed while {doing} ({error}){hint}")
        return answer, data

    def _died(self, doing: str) -> ModelFileError:
        try:
            code = self._process.wait(timeout=_EXIT_WAIT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            code = self._process.wait()
        self.close()
        if code is not None and code < 0:
            try:
                what = f"crashed (signal {-code}, {signal.Signals(-code).name})"
            except ValueError:
                what = f"crashed (signal {-code})"
        else:
            what = f"stopped (exit code {code})"
        return ModelFileError(f"{self.name}: the package's model {what} while {doing}, in its own process "
                              "(napari-selfdenoise is unaffected); the package is damaged, crafted, or needs "
                              f"more than the {self._memory / 1024**3:.1f} GiB its process may use ({MEMORY_ENV})")

    def close(self) -> None:
        """End the child (it exits when its stdin closes; killed if it does not within a few seconds)."""
        process = getattr(self, "_process", None)
        if process is None:
            return
        if process.poll() is None:
            try:
                process.stdin.close()
            except OSError:
                pass
            try:
                process.wait(timeout=_EXIT_WAIT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdin, process.stdout, self._stderr):
            try:
                stream.close()
            except OSError:
                pass

    def __enter__(self) -> ModelProcess:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - never a message at interpreter exit
            pass


# =============================================================================================== child


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this process when its parent dies (and exit if it already has)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)


def _warm_up(torch) -> None:
    """Run the usual kernels once, so libraries torch loads lazily are loaded before files are locked."""
    with torch.no_grad():
        x = torch.rand(1, 2, 8, 8)
        y = torch.nn.functional.conv2d(x, torch.rand(2, 2, 3, 3), padding=1)
        y = torch.nn.functional.max_pool2d(torch.relu(y), 2)
        torch.nn.functional.interpolate(y, scale_factor=2.0)
        z = torch.nn.functional.conv3d(torch.rand(1, 2, 4, 8, 8), torch.rand(2, 2, 3, 3, 3), padding=1)
        torch.nn.functional.avg_pool3d(z, 2)
        torch.cat([x, x], 1).sigmoid().mean()
        torch.rand(8, 8) @ torch.rand(8, 8)


def _lock_files() -> None:
    """No new file descriptors from here on: ``open`` and ``socket`` fail with EMFILE."""
    resource = _resource()
    if resource is None:
        return
    probe = os.open(os.devnull, os.O_RDONLY)
    os.close(probe)
    resource.setrlimit(resource.RLIMIT_NOFILE, (probe, probe))


def _limit_memory(torch, device: str, limit: int) -> None:
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        total = torch.cuda.get_device_properties(index).total_memory
        share = limit / total if os.environ.get(MEMORY_ENV, "").strip() else 0.75
        torch.cuda.set_per_process_memory_fraction(min(1.0, share), index)
        return
    resource = _resource()
    if resource is None:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _resource():
    """The ``resource`` module where the limits are enforced (Linux); None elsewhere (Windows has no
    such limits, macOS does not enforce RLIMIT_AS): there the child still keeps crashes out of napari."""
    if not sys.platform.startswith("linux"):
        return None
    import resource

    return resource


def _load(header: dict, weights: bytes):
    """The model as a function tile -> first output (float32 arrays)."""
    device = str(header.get("device") or "cpu")
    threads = max(1, int(header.get("threads") or 1))
    if header.get("kind") == "onnx":
        _limit_memory(None, "cpu", int(header["memory"]))
        return _load_onnx(weights, threads)
    import torch

    torch.set_num_threads(threads)
    _limit_memory(torch, device, int(header["memory"]))
    if device == "cpu":
        _warm_up(torch)
        _lock_files()
    module = torch.jit.load(io.BytesIO(weights), map_location=device).eval()

    def forward(tile: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            result = module(torch.from_numpy(tile).to(device))
        if isinstance(result, (tuple, list)):
            result = result[0]
        if not isinstance(result, torch.Tensor):
            raise TypeError(f"the model returned a {type(result).__name__}, not a tensor")
        return result.detach().float().cpu().numpy()

    return forward


def _load_onnx(weights: bytes, threads: int):
    """onnxruntime on the CPU. The parent checked the model (``safeonnx.check_onnx``: no external data, only
    standard operators); files are locked once the session exists."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(weights, sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    _lock_files()

    def forward(tile: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: tile})[0], dtype=np.float32)

    return forward


def _tile(header: dict, payload: bytes) -> np.ndarray:
    shape = header.get("shape")
    if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)
            and int(np.prod(shape, dtype=np.int64)) * 4 == len(payload)):
        raise ValueError("a malformed tile")
    return np.frombuffer(payload, dtype=np.float32).reshape(shape).copy()


def _describe(err: BaseException) -> str:
    """One line: TorchScript errors carry the script's traceback, whose last line is the error itself."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    text = lines[-1] if len(lines) > 1 and "TorchScript" in lines[0] else lines[0]
    return text[:300] if ":" in text.split(" ")[0] else f"{type(err).__name__}: {text[:300]}"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _die_with_parent(int(argv[0]))
    # The protocol gets private copies of stdin/stdout; fd 1 then goes to stderr, so whatever the model
    # prints (TorchScript's print writes to fd 1) cannot corrupt the replies.
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    try:
        message = _receive(requests, _MAX_WEIGHTS)
    except _ProtocolError:
        return 1
    if message is None:
        return 0
    header, weights = message
    try:
        forward = _load(header, weights)
    except Exception as err:  # noqa: BLE001 - reported to the parent as one line
        _send(replies, {"ok": False, "error": _describe(err)})
        return 1
    del weights
    _send(replies, {"ok": True})
    while True:
        try:
            message = _receive(requests, _MAX_TILE)
        except _ProtocolError:
            return 1
        if message is None:  # the parent closed the pipe (or died): done
            return 0
        header, payload = message
        try:
            result = np.ascontiguousarray(forward(_tile(header, payload)), dtype=np.float32)
        except Exception as err:  # noqa: BLE001
            _send(replies, {"ok": False, "error": _describe(err)})
            continue
        _send(replies, {"ok": True, "shape": list(result.shape)}, result)


if __name__ == "__main__":
    sys.exit(main())
