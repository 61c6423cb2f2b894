"""Reading PyTorch archives without unpickling: a pickle *checker* and a state-dict *interpreter*.

Python's ``pickle`` (and ``torch.load``, which uses it) runs whatever callables a file names, so a weights
file can carry code. Nothing here calls ``pickle.loads``:

- ``check_pickle`` walks a pickle's opcodes with ``pickletools.genops`` (a parser: it executes nothing)
  and refuses any global outside a short allow-list. It guards the ``.pkl`` entries of a TorchScript
  archive before ``torch.jit.load`` sees them.
- ``read_state_dict`` interprets the few opcodes that ``torch.save(module.state_dict())`` writes, with
  tensors rebuilt from the archive's raw storages; any other opcode or global is refused. It reads the
  ``pytorch_state_dict`` weights of bioimage.io packages whose architecture is one of ours.

What ``torch.jit.load`` does with a TorchScript archive (torch 2.x): ``data.pkl`` and ``constants.pkl``
are read by TorchScript's own C++ unpickler, which does not import Python modules or call Python
callables. Globals resolve only against a fixed table (tensor rebuilding, ``torch.jit._pickle`` list
builders, storages, ``collections.OrderedDict``) and against ``__torch__.*`` classes, which are compiled
from the archive's ``code/`` files by the TorchScript compiler (a restricted language with no ``import``,
no ``os`` and no ``eval``); an unknown global is an error, and nothing runs at load time but module
construction. Running the model then executes that TorchScript code, i.e. tensor operators. We still
check the pickles first, so a doctored archive is refused with our message before torch parses it.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from typing import Callable

import torch

from .errors import ModelFileError

# The globals TorchScript and torch.save write for plain modules and state dicts.
_TORCH_STORAGES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
ALLOWED_GLOBALS = {
    "collections": {"OrderedDict"},
    "torch._utils": {"_rebuild_tensor_v2", "_rebuild_parameter"},
    "torch": set(_TORCH_STORAGES),
    "torch.jit._pickle": {"build_intlist", "build_doublelist", "build_boollist", "build_tensorlist",
                          "build_genericlist", "restore_type_tag"},
}
_REFUSED_OPCODES = {"INST", "OBJ", "EXT1", "EXT2", "EXT4", "STACK_GLOBAL", "PERSID", "NEWOBJ_EX"}


def check_pickle(data: bytes, name: str, allow_torchscript_classes: bool = True) -> None:
    """Raise a ``ModelFileError`` when the pickle ``data`` names anything outside ``ALLOWED_GLOBALS``
    (and, for TorchScript, ``__torch__.*`` classes). Parses only; never unpickles."""
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in _REFUSED_OPCODES:
                raise ModelFileError(f"{name} uses the pickle instruction {opcode.name}, which can run "
                                     "code; refusing to load it")
            if opcode.name == "GLOBAL":
                module, _, attribute = str(arg).partition(" ")
                if allow_torchscript_classes and module.startswith("__torch__."):
                    continue
                if attribute not in ALLOWED_GLOBALS.get(module, ()):
                    raise ModelFileError(f"{name} asks to call {module}.{attribute} when loaded (a "
                                         "pickle payload that could run code); refusing to load it")
    except ModelFileError:
        raise
    except Exception as err:  # pickletools raises ValueError and friends on garbage
        raise ModelFileError(f"{name} is not a valid PyTorch archive ({err})") from err


def check_torchscript(data: bytes, name: str) -> None:
    """Check every pickle inside a TorchScript archive (see the module docstring) before loading it."""
    from .modelfile import ZIP_ERRORS, open_zip, read_entry

    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ModelFileError(f"{name} is not a TorchScript archive (not a zip)")
    try:
        with open_zip(io.BytesIO(data), name) as archive:
            names = archive.namelist()
            if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
                raise ModelFileError(f"{name} is not a TorchScript archive (no data.pkl)")
            for entry in names:
                if entry.endswith(".pkl"):
                    check_pickle(read_entry(archive, entry, name), f"{name} ({entry})")
    except ZIP_ERRORS as err:
        raise ModelFileError(f"{name} is damaged ({err})") from err


def load_torchscript(data: bytes, name: str) -> torch.jit.ScriptModule:
    check_torchscript(data, name)
    try:
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as err:
        raise ModelFileError(f"{name} could not be loaded as TorchScript ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''})") from err
    return module.eval()


class _Global:
    def __init__(self, module: str, name: str):
        self.module, self.name = module, name


class _Mark:
    pass


def read_state_dict(data: bytes, name: str) -> dict[str, torch.Tensor]:
    """The tensors of a ``torch.save(state_dict)`` archive, by interpreting its pickle (never unpickling).

    Only dicts/OrderedDicts of tensors (and plain scalars, strings, tuples, lists) are understood."""
    from .modelfile import ZIP_ERRORS, open_zip, read_entry

    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ModelFileError(f"{name} is not a PyTorch zip archive (an old-style torch.save file?); "
                             "refusing to read it")
    try:
        with open_zip(io.BytesIO(data), name) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if len(pickles) != 1:
                raise ModelFileError(f"{name} is not a PyTorch state-dict archive")
            prefix = pickles[0][: -len("data.pkl")]
            payload = read_entry(archive, pickles[0], name)
            check_pickle(payload, name, allow_torchscript_classes=False)
            storages: dict[str, torch.Tensor] = {}

            def storage(key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
                if key not in storages:
                    raw = bytearray(read_entry(archive, f"{prefix}data/{key}", name))
                    flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
                    if flat.numel() < numel:
                        raise ModelFileError(f"{name}: storage {key} is shorter than declared")
                    storages[key] = flat
                return storages[key]

            result = _interpret(payload, name, storage)
    except ZIP_ERRORS as err:
        raise ModelFileError(f"{name} is damaged ({err})") from err
    if isinstance(result, dict) and "state_dict" in result and isinstance(result["state_dict"], dict):
        result = result["state_dict"]
    if not isinstance(result, dict) or not all(isinstance(v, torch.Tensor) for v in result.values()):
        raise ModelFileError(f"{name} does not hold a state dict of tensors")
    return {str(k): v for k, v in result.items()}


def _interpret(payload: bytes, name: str, storage: Callable) -> object:
    stack: list = []
    memo: dict[int, object] = {}

    def pop_mark() -> list:
        for index in range(len(stack) - 1, -1, -1):
            if isinstance(stack[index], _Mark):
                items = stack[index + 1:]
                del stack[index:]
                return items
        raise ModelFileError(f"{name}: malformed pickle (no mark)")

    def call(function, args):
        if not isinstance(function, _Global):
            raise ModelFileError(f"{name}: malformed pickle (calls a non-global)")
        if (function.module, function.name) == ("collections", "OrderedDict"):
            return dict(*args)
        if (function.module, function.name) == ("torch._utils", "_rebuild_tensor_v2"):
            flat, offset, size, stride = args[:4]
            if not isinstance(flat, torch.Tensor):
                raise ModelFileError(f"{name}: malformed tensor record")
            return torch.as_strided(flat, tuple(size), tuple(stride), int(offset)).clone()
        if (function.module, function.name) == ("torch._utils", "_rebuild_parameter"):
            return args[0]
        raise ModelFileError(f"{name}: refusing to call {function.module}.{function.name}")

    for opcode, arg, _ in pickletools.genops(payload):
        op = opcode.name
        if op in ("PROTO", "FRAME"):
            continue
        if op == "STOP":
            break
        if op == "MARK":
            stack.append(_Mark())
        elif op == "EMPTY_DICT":
            stack.append({})
        elif op == "EMPTY_LIST":
            stack.append([])
        elif op == "EMPTY_TUPLE":
            stack.append(())
        elif op in ("NONE",):
            stack.append(None)
        elif op in ("NEWTRUE", "NEWFALSE"):
            stack.append(op == "NEWTRUE")
        elif op in ("BININT", "BININT1", "BININT2", "LONG1", "LONG4", "BINFLOAT",
                    "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "SHORT_BINBYTES", "BINBYTES"):
            stack.append(arg)
        elif op == "GLOBAL":
            module, _, attribute = str(arg).partition(" ")
            stack.append(_Global(module, attribute))
        elif op in ("BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
        elif op == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif op in ("BINGET", "LONG_BINGET"):
            stack.append(memo[arg])
        elif op == "TUPLE":
            stack.append(tuple(pop_mark()))
        elif op in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(op[-1])
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif op == "BINPERSID":
            record = stack.pop()
            if not (isinstance(record, tuple) and len(record) == 5 and record[0] == "storage"
                    and isinstance(record[1], _Global) and record[1].name in _TORCH_STORAGES):
                raise ModelFileError(f"{name}: unknown persistent record in the pickle")
            stack.append(storage(str(record[2]), _TORCH_STORAGES[record[1].name], int(record[4])))
        elif op == "REDUCE":
            args = stack.pop()
            function = stack.pop()
            stack.append(call(function, args))
        elif op == "BUILD":
            stack.pop()  # state of an OrderedDict (its _metadata): not needed
        elif op == "SETITEM":
            value = stack.pop()
            key = stack.pop()
            stack[-1][key] = value
        elif op == "SETITEMS":
            items = pop_mark()
            target = stack[-1]
            for key, value in zip(items[::2], items[1::2]):
                target[key] = value
        elif op == "APPEND":
            value = stack.pop()
            stack[-1].append(value)
        elif op == "APPENDS":
            items = pop_mark()
            stack[-1].extend(items)
        else:
            raise ModelFileError(f"{name} uses the pickle instruction {op}, which a state dict does not "
                                 "need; refusing to load it")
    if len(stack) != 1:
        raise ModelFileError(f"{name}: malformed pickle")
    return stack[0]
