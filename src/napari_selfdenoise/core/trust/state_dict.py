"""Reading a ``torch.save(state_dict)`` archive without unpickling: an interpreter of its pickle.

``read_state_dict`` interprets the few opcodes that ``torch.save(module.state_dict())`` writes, with tensors
rebuilt from the archive's raw storages (each checked against its storage first); any other opcode or global
is refused (``safetorch.check_pickle`` first). It reads the ``pytorch_state_dict`` weights of bioimage.io
packages whose architecture is one of ours. Nothing here calls ``pickle.loads``.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from collections.abc import Callable

import torch

from ..errors import ModelFileError
from .safetorch import TORCH_STORAGES, check_pickle


class _Global:
    def __init__(self, module: str, name: str):
        self.module, self.name = module, name


class _Mark:
    pass


# A state dict's pickle is a few KB per hundred tensors; this leaves room for big models and still refuses
# a payload that only exists to make the interpreter build huge Python containers.
_MAX_PICKLE_BYTES = 64 * 1024**2
# Rebuilt tensors may repeat a storage (tied weights), but not blow it up: at most this many times the
# bytes of all storages read, plus a little for tiny files.
_MAX_REBUILT_FACTOR = 2
_MAX_REBUILT_SLACK = 1024**2
_MAX_DIMS = 16


def read_state_dict(data: bytes, name: str) -> dict[str, torch.Tensor]:
    """The tensors of a ``torch.save(state_dict)`` archive, by interpreting its pickle (never unpickling).

    Only dicts/OrderedDicts of tensors (and plain scalars, strings, tuples, lists) are understood. Every
    tensor is checked against its storage before it is built (offset, sizes and strides in range, no more
    elements than the storage holds: a stride-0 view cannot turn a few bytes into gigabytes), and any
    problem with the file, whatever Python would raise, becomes one ``ModelFileError``."""
    try:
        return _read_state_dict(data, name)
    except ModelFileError:
        raise
    except MemoryError as err:
        raise ModelFileError(f"{name}: the state dict does not fit in memory; refusing it") from err
    except Exception as err:  # a hostile file must never end in a traceback
        raise ModelFileError(f"{name} is not a valid PyTorch state dict ({type(err).__name__}: "
                             f"{_first_line(err)}); the file is damaged or was crafted") from err


def _first_line(err: BaseException) -> str:
    text = str(err)
    return text.splitlines()[0][:200] if text else "no details"


def _read_state_dict(data: bytes, name: str) -> dict[str, torch.Tensor]:
    from ..io.modelfile import ZIP_ERRORS, open_zip, read_entry

    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ModelFileError(f"{name} is not a PyTorch zip archive (an old-style torch.save file?); "
                             "refusing to read it")
    try:
        with open_zip(io.BytesIO(data), name) as archive:
            names = set(archive.namelist())
            pickles = [n for n in names if n.endswith("data.pkl")]
            if len(pickles) != 1:
                raise ModelFileError(f"{name} is not a PyTorch state-dict archive")
            prefix = pickles[0][: -len("data.pkl")]
            payload = read_entry(archive, pickles[0], name, limit=_MAX_PICKLE_BYTES)
            check_pickle(payload, name, allow_torchscript_classes=False)
            storages: dict[str, torch.Tensor] = {}

            def storage(key, dtype: torch.dtype, numel) -> torch.Tensor:
                if not isinstance(key, str) or not key.isalnum():
                    raise ModelFileError(f"{name}: the pickle names a storage {str(key)[:40]!r}, which is not "
                                         "a storage key; the file is damaged or was crafted")
                if not _is_count(numel):
                    raise ModelFileError(f"{name}: storage {key} declares {numel!r} elements")
                entry = f"{prefix}data/{key}"
                if entry not in names:
                    raise ModelFileError(f"{name}: storage {key} is missing from the archive")
                if key not in storages:
                    raw = bytearray(read_entry(archive, entry, name))
                    if len(raw) % _itemsize(dtype):
                        raise ModelFileError(f"{name}: storage {key} is not a whole number of {dtype} values")
                    storages[key] = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
                flat = storages[key]
                if flat.dtype != dtype:
                    raise ModelFileError(f"{name}: storage {key} is read as two different types")
                if flat.numel() < numel:
                    raise ModelFileError(f"{name}: storage {key} is shorter than declared")
                return flat

            def budget() -> int:
                stored = sum(t.numel() * _itemsize(t.dtype) for t in storages.values())
                return _MAX_REBUILT_FACTOR * stored + _MAX_REBUILT_SLACK

            result = _interpret(payload, name, storage, budget)
    except ZIP_ERRORS as err:
        raise ModelFileError(f"{name} is damaged ({err})") from err
    if isinstance(result, dict) and "state_dict" in result and isinstance(result["state_dict"], dict):
        result = result["state_dict"]
    if not isinstance(result, dict) or not all(isinstance(v, torch.Tensor) for v in result.values()):
        raise ModelFileError(f"{name} does not hold a state dict of tensors")
    if not all(isinstance(k, str) for k in result):
        raise ModelFileError(f"{name}: the state dict's keys are not all names")
    return dict(result)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def _is_count(value) -> bool:
    """A non-negative Python int (bool excluded: True is not a size)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _rebuild_tensor(args, name: str, spent: int, budget: int) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``, with every number checked
    against the storage before ``as_strided`` sees it."""
    if not isinstance(args, tuple) or len(args) < 4:
        raise ModelFileError(f"{name}: malformed tensor record (too few fields)")
    flat, offset, size, stride = args[:4]
    if not isinstance(flat, torch.Tensor):
        raise ModelFileError(f"{name}: malformed tensor record (no storage)")
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride) <= _MAX_DIMS
            and all(_is_count(v) for v in (offset, *size, *stride))):
        raise ModelFileError(f"{name}: a tensor's offset, sizes or strides are not non-negative integers "
                             "of matching length; the file is damaged or was crafted")
    numel = 1
    for extent in size:
        numel *= extent
    if numel > flat.numel():
        raise ModelFileError(f"{name}: a tensor of shape {tuple(size)} claims {numel} values from a storage "
                             f"of {flat.numel()} (an overlapping or stride-0 view); refusing it")
    if numel:
        last = offset + sum((extent - 1) * step for extent, step in zip(size, stride))
        if last >= flat.numel():
            raise ModelFileError(f"{name}: a tensor of shape {tuple(size)} reaches past the end of its storage; "
                                 "the file is damaged or was crafted")
    elif offset > flat.numel():
        raise ModelFileError(f"{name}: a tensor starts past the end of its storage")
    if spent + numel * flat.element_size() > budget:
        raise ModelFileError(f"{name}: its tensors would take far more memory than the file's data; refusing it")
    return torch.as_strided(flat, size, stride, offset).clone()


def _interpret(payload: bytes, name: str, storage: Callable, budget: Callable[[], int] | None = None) -> object:
    """Run the few opcodes a state dict needs on a stack of plain values. Malformed input (stack underflow,
    a missing memo entry, an operation on the wrong kind of value) raises ``ModelFileError``."""
    stack: list = []
    memo: dict[int, object] = {}
    spent = [0]  # bytes of the tensors rebuilt so far

    def malformed(what: str) -> ModelFileError:
        return ModelFileError(f"{name}: malformed pickle ({what}); the file is damaged or was crafted")

    def pop():
        if not stack or isinstance(stack[-1], _Mark):
            raise malformed("stack underflow")
        return stack.pop()

    def top(kind):
        if not stack or not isinstance(stack[-1], kind):
            raise malformed(f"expected a {kind.__name__} on the stack")
        return stack[-1]

    def pop_mark() -> list:
        for index in range(len(stack) - 1, -1, -1):
            if isinstance(stack[index], _Mark):
                items = stack[index + 1:]
                del stack[index:]
                return items
        raise malformed("no mark")

    def call(function, args):
        if not isinstance(function, _Global):
            raise malformed("calls a non-global")
        if not isinstance(args, tuple):
            raise malformed("call arguments are not a tuple")
        if (function.module, function.name) == ("collections", "OrderedDict"):
            if args and not (len(args) == 1 and isinstance(args[0], (dict, list, tuple))):
                raise malformed("bad OrderedDict arguments")
            return dict(*args)
        if (function.module, function.name) == ("torch._utils", "_rebuild_tensor_v2"):
            tensor = _rebuild_tensor(args, name, spent[0], budget() if budget else 2**62)
            spent[0] += tensor.numel() * tensor.element_size()
            return tensor
        if (function.module, function.name) == ("torch._utils", "_rebuild_parameter"):
            if not args or not isinstance(args[0], torch.Tensor):
                raise malformed("a parameter without a tensor")
            return args[0]
        raise ModelFileError(f"{name}: refusing to call {function.module}.{function.name}")

    def set_item(target, key, value):
        if not isinstance(target, dict):
            raise malformed("sets an item on something that is not a dict")
        if not isinstance(key, (str, int, float, bool, type(None), tuple)):
            raise malformed("a dict key that is not a plain value")
        target[key] = value

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
        elif op in ("BINPUT", "LONG_BINPUT", "MEMOIZE"):
            if not stack or isinstance(stack[-1], _Mark):
                raise malformed("memoizes an empty stack")
            memo[arg if op != "MEMOIZE" else len(memo)] = stack[-1]
        elif op in ("BINGET", "LONG_BINGET"):
            if arg not in memo:
                raise malformed(f"memo entry {arg} is missing")
            stack.append(memo[arg])
        elif op == "TUPLE":
            stack.append(tuple(pop_mark()))
        elif op in ("TUPLE1", "TUPLE2", "TUPLE3"):
            items = [pop() for _ in range(int(op[-1]))]
            stack.append(tuple(reversed(items)))
        elif op == "BINPERSID":
            record = pop()
            if not (isinstance(record, tuple) and len(record) == 5 and record[0] == "storage"
                    and isinstance(record[1], _Global) and record[1].name in TORCH_STORAGES):
                raise ModelFileError(f"{name}: unknown persistent record in the pickle")
            stack.append(storage(record[2], TORCH_STORAGES[record[1].name], record[4]))
        elif op == "REDUCE":
            args = pop()
            function = pop()
            stack.append(call(function, args))
        elif op == "BUILD":
            pop()  # state of an OrderedDict (its _metadata): not needed
            if not stack or isinstance(stack[-1], _Mark):
                raise malformed("BUILD without an object")
        elif op == "SETITEM":
            value = pop()
            key = pop()
            set_item(top(object), key, value)
        elif op == "SETITEMS":
            items = pop_mark()
            if len(items) % 2:
                raise malformed("SETITEMS with an odd number of values")
            target = top(dict)
            for key, value in zip(items[::2], items[1::2]):
                set_item(target, key, value)
        elif op == "APPEND":
            value = pop()
            top(list).append(value)
        elif op == "APPENDS":
            items = pop_mark()
            top(list).extend(items)
        else:
            raise ModelFileError(f"{name} uses the pickle instruction {op}, which a state dict does not "
                                 "need; refusing to load it")
    else:
        raise malformed("no STOP instruction")
    if len(stack) != 1 or isinstance(stack[0], _Mark):
        raise malformed("leftover values")
    return stack[0]
