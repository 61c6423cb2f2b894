"""Checking PyTorch archives without unpickling: pickles and TorchScript archives are parsed, never run.

Python's ``pickle`` (and ``torch.load``, which uses it) runs whatever callables a file names, so a weights
file can carry code. Nothing here calls ``pickle.loads``:

- ``check_pickle`` walks a pickle's opcodes with ``pickletools.genops`` (a parser: it executes nothing)
  and refuses any global outside a short allow-list; ``check_pickle_depth`` refuses deep nesting.
- ``check_torchscript`` checks a TorchScript archive before torch parses it: a plain zip (no flatbuffer
  polyglot), bounded entries, every pickle checked and of bounded nesting, no ``PythonOp``.

Reading a state dict's tensors (an interpreter of its pickle) is ``state_dict.read_state_dict``.

TorchScript is code, whatever its pickles hold: ``torch.jit.load`` compiles the archive's ``code/`` files
and runs a module's scripted ``__setstate__`` while loading it, and running the model runs its scripted
``forward``. TorchScript has no ``import`` or ``eval``, but its operators include ``torch.from_file``
(which creates, reads and writes files). So nothing here loads TorchScript: a foreign package's TorchScript
runs only when the user trusts it, and then only in a child process (``core.trust.sandbox``).
"""

from __future__ import annotations

import io
import pickletools
import re

import torch

from ..errors import ModelFileError

# The globals TorchScript and torch.save write for plain modules and state dicts.
TORCH_STORAGES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
ALLOWED_GLOBALS = {
    "collections": {"OrderedDict"},
    "torch._utils": {"_rebuild_tensor_v2", "_rebuild_parameter"},
    "torch": set(TORCH_STORAGES),
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
                if allow_torchscript_classes and (module == "__torch__" or module.startswith("__torch__.")):
                    continue
                if attribute not in ALLOWED_GLOBALS.get(module, ()):
                    raise ModelFileError(f"{name} asks to call {module}.{attribute} when loaded (a "
                                         "pickle payload that could run code); refusing to load it")
    except ModelFileError:
        raise
    except Exception as err:  # pickletools raises ValueError and friends on garbage
        raise ModelFileError(f"{name} is not a valid PyTorch archive ({err})") from err


# A TorchScript archive is a plain zip; torch 2.x also reads a flatbuffer module (mobile format), which it
# recognises by this identifier at bytes 4..8, whatever follows: a flatbuffer with a harmless zip appended
# would pass every check of the zip and still load as the flatbuffer.
_ZIP_LOCAL_HEADER = b"PK\x03\x04"
_ZIP_END = b"PK\x05\x06"
_FLATBUFFER_MAGIC = b"PTMF"
# Containers nested deeper than this are refused: torch's unpickler segfaults on ~200k nested lists, and no
# module's data.pkl nests more than a few dozen levels.
MAX_PICKLE_DEPTH = 1000
_PICKLE_START = re.compile(rb"\x80[\x02-\x05]")  # PROTO 2-5: how every pickle torch writes begins


def check_torchscript(data: bytes, name: str) -> None:
    """Refuse a TorchScript archive that torch could read differently from us, or whose parsing alone is
    known to be dangerous; parses only (``torch.jit.load`` is never called here).

    - the file is a plain zip from its first byte to its last (no flatbuffer ``PTMF`` module, no data
      before the first entry or after the directory, no duplicate names), so torch reads what we check;
    - every entry inflates plausibly (``modelfile.read_entry``: an inner zip bomb is refused);
    - every pickle (``*.pkl``, ``*.debug_pkl``, and any other non-storage entry that starts like one)
      names only allowed globals (``check_pickle``) and nests at most ``MAX_PICKLE_DEPTH`` containers;
    - no ``code/`` file calls ``ops.prim.PythonOp`` (a node that makes torch call into Python; crafted,
      it crashes ``torch.jit.load``).

    These checks are defence in depth. The boundary is elsewhere: a foreign package's TorchScript is run
    only when the user trusts it, and then in a child process (``core.trust.sandbox``)."""
    from ..io.modelfile import ZIP_ERRORS, open_zip, read_entry

    _check_plain_zip(data, name)
    try:
        with open_zip(io.BytesIO(data), name) as archive:
            infos = archive.infolist()
            names = [info.filename for info in infos]
            if len(set(names)) != len(names):
                raise ModelFileError(f"{name} holds two entries of the same name (zip readers would disagree "
                                     "on which one counts); refusing it")
            if min(info.header_offset for info in infos) != 0:
                raise ModelFileError(f"{name} has data before its first zip entry; refusing it")
            if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
                raise ModelFileError(f"{name} is not a TorchScript archive (no data.pkl)")
            for entry in names:
                content = read_entry(archive, entry, name)  # refuses implausible sizes and ratios
                where = f"{name} ({entry})"
                storage = "/data/" in f"/{entry}" and not entry.endswith(".pkl")
                if entry.endswith((".pkl", ".debug_pkl")) or (not storage and _PICKLE_START.match(content)):
                    check_pickle(content, where)
                    check_pickle_depth(content, where)
                if "/code/" in f"/{entry}" and b"PythonOp" in content:
                    raise ModelFileError(f"{where} calls ops.prim.PythonOp (a call into Python, which crafted "
                                         "TorchScript uses to crash torch); refusing it")
    except ZIP_ERRORS as err:
        raise ModelFileError(f"{name} is damaged ({err})") from err


def _check_plain_zip(data: bytes, name: str) -> None:
    if data[4:8] == _FLATBUFFER_MAGIC:
        raise ModelFileError(f"{name} is a flatbuffer (mobile) TorchScript module, perhaps disguised as a zip; "
                             "napari-selfdenoise reads only zip TorchScript archives; refusing it")
    if not data.startswith(_ZIP_LOCAL_HEADER):
        raise ModelFileError(f"{name} is not a TorchScript archive (it does not start as a zip archive)")
    end = data.rfind(_ZIP_END)
    if end < 0 or end + 22 > len(data):
        raise ModelFileError(f"{name} is damaged (no zip directory at its end)")
    comment = int.from_bytes(data[end + 20:end + 22], "little")
    if end + 22 + comment != len(data):
        raise ModelFileError(f"{name} has data after its zip directory; refusing it")


def check_pickle_depth(data: bytes, name: str, limit: int = MAX_PICKLE_DEPTH) -> None:
    """Raise a ``ModelFileError`` when the containers a pickle would build nest deeper than ``limit`` (or
    refer to themselves). Parses only: the stack is simulated with container ids, and every container
    remembers the containers put into it, so nesting built through the memo is counted too."""
    mark = object()
    children: list[list[int]] = []  # container id -> ids of the containers inside it
    stack: list = []  # container ids, None (anything else) or mark
    memo: dict = {}

    def malformed(what: str) -> ModelFileError:
        return ModelFileError(f"{name}: malformed pickle ({what}); the file is damaged or was crafted")

    def container(items=()) -> int:
        children.append([i for i in items if isinstance(i, int)])
        return len(children) - 1

    def pop(count: int) -> list:
        if count > len(stack) or any(item is mark for item in stack[len(stack) - count:]):
            raise malformed("stack underflow")
        items = stack[len(stack) - count:]
        del stack[len(stack) - count:]
        return items

    def pop_mark() -> list:
        for index in range(len(stack) - 1, -1, -1):
            if stack[index] is mark:
                items = stack[index + 1:]
                del stack[index:]
                return items
        raise malformed("no mark")

    def add_to_top(items) -> None:
        if not stack or stack[-1] is mark:
            raise malformed("stack underflow")
        if not isinstance(stack[-1], int):
            stack[-1] = container()
        children[stack[-1]].extend(i for i in items if isinstance(i, int))

    try:
        for opcode, arg, _ in pickletools.genops(data):
            op = opcode.name
            if op == "STOP":
                break
            if op in ("PROTO", "FRAME"):
                continue
            if op == "MARK":
                stack.append(mark)
            elif op in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_TUPLE", "EMPTY_SET"):
                stack.append(container())
            elif op in ("LIST", "TUPLE", "DICT", "FROZENSET", "OBJ", "INST"):
                stack.append(container(pop_mark()))
            elif op in ("TUPLE1", "TUPLE2", "TUPLE3"):
                stack.append(container(pop(int(op[-1]))))
            elif op in ("REDUCE", "NEWOBJ"):
                stack.append(container(pop(2)))
            elif op == "NEWOBJ_EX":
                stack.append(container(pop(3)))
            elif op in ("APPEND", "BUILD"):
                add_to_top(pop(1))
            elif op == "SETITEM":
                add_to_top(pop(2))
            elif op in ("APPENDS", "SETITEMS", "ADDITEMS"):
                add_to_top(pop_mark())
            elif op in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                if not stack or stack[-1] is mark:
                    raise malformed("memoizes an empty stack")
                memo[len(memo) if op == "MEMOIZE" else arg] = stack[-1]
            elif op in ("GET", "BINGET", "LONG_BINGET"):
                if arg not in memo:
                    raise malformed(f"memo entry {arg} is missing")
                stack.append(memo[arg])
            elif op == "POP":
                if stack and stack[-1] is mark:
                    stack.pop()
                else:
                    pop(1)
            elif op == "POP_MARK":
                pop_mark()
            elif op == "DUP":
                stack.append(pop(1)[0])
                stack.append(stack[-1])
            else:  # scalars, globals, persistent ids: their stack effect, from pickletools' table
                before = opcode.stack_before
                if pickletools.markobject in before:
                    pop_mark()
                else:
                    pop(len(before))
                stack.extend([None] * len(opcode.stack_after))
    except ModelFileError:
        raise
    except Exception as err:  # pickletools raises ValueError and friends on garbage
        raise ModelFileError(f"{name} is not a valid pickle ({err})") from err
    if _deepest(children, name) > limit:
        raise ModelFileError(f"{name} nests containers more than {limit} levels deep (crafted to crash torch's "
                             "unpickler); refusing it")


def _deepest(children: list[list[int]], name: str) -> int:
    """The longest chain of containers (iterative depth-first search; a cycle is refused)."""
    depth = [0] * len(children)
    state = [0] * len(children)  # 0 unseen, 1 on the current path, 2 done
    for root in range(len(children)):
        if state[root]:
            continue
        todo = [(root, False)]
        while todo:
            node, finished = todo.pop()
            if finished:
                depth[node] = 1 + max((depth[c] for c in children[node]), default=0)
                state[node] = 2
                continue
            if state[node] == 2:
                continue
            state[node] = 1
            todo.append((node, True))
            for child in children[node]:
                if state[child] == 1:
                    raise ModelFileError(f"{name}: a container of the pickle contains itself; refusing it")
                if state[child] == 0:
                    todo.append((child, False))
    return max(depth, default=0)
