"""Reads a `torch.save`d state dict (`pytorch_model.bin`) into numpy without torch, safely by construction.

Format. A zip-format torch checkpoint (torch >= 1.6) holds `<root>/data.pkl`, a pickle of a dict (usually an
OrderedDict) of tensors, and one raw little-endian file per storage at `<root>/data/<key>` (optionally also
`<root>/byteorder`, `<root>/version`, `.format_version`, ...). Each tensor in the pickle is
`torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[,
metadata])`, where `storage` is a persistent id `('storage', torch.FloatStorage, key, location, numel)`.

How it is read. `data.pkl` is NOT handed to `pickle.Unpickler`. A small interpreter below walks its opcodes
itself and only knows the ones `torch.save` writes for a state dict (protocols 2-5):
  PROTO FRAME STOP MARK EMPTY_DICT EMPTY_LIST EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3 BININT BININT1 BININT2
  LONG1 BINFLOAT NONE NEWTRUE NEWFALSE BINUNICODE SHORT_BINUNICODE BINUNICODE8 SHORT_BINBYTES BINBYTES
  BINBYTES8 BINPUT LONG_BINPUT MEMOIZE BINGET LONG_BINGET SETITEM SETITEMS APPEND APPENDS GLOBAL STACK_GLOBAL
  REDUCE BUILD BINPERSID.
Every other opcode is refused (`UnsafeCheckpointError` naming it and the rule): INST, OBJ, NEWOBJ, NEWOBJ_EX
(instantiate arbitrary classes), EXT1/2/4 (copyreg registry lookups), PERSID (text persistent ids), the
protocol-0/1 text opcodes, DUP/POP, BYTEARRAY8, NEXT_BUFFER, ... The values the interpreter builds are plain
inert data (int, float, bool, None, str, bytes, tuple, list, dict) plus the arrays it builds itself; nothing
from the file is ever called, and no object from the file is hashed or compared except str/int/float/bool/None
dict keys, so no user code, `__reduce__`, `__setstate__` or `__array_interface__` can run.
  * GLOBAL / STACK_GLOBAL resolve only `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
    `torch._utils._rebuild_parameter`, `torch._utils._rebuild_parameter_with_state` and the `torch.<X>Storage`
    types of `_STORAGE_DTYPES`, to markers; any other name is refused before anything runs.
  * REDUCE calls only those markers, each implemented here: `OrderedDict()` (no arguments), the tensor
    rebuild (rules below), and the parameter rebuilds (which return their tensor). BINPERSID accepts only
    `('storage', <storage type>, key, location: str, numel: int)`.
  * BUILD applies only to an OrderedDict/dict and only with state None or `{'_metadata': ...}` (what
    `OrderedDict.__reduce__` writes for `module.state_dict()`); the state is dropped.
  * dict keys must be str/int/float/bool/None (hashing them cannot recurse); APPEND(S) only onto lists.
  * The result must be a dict of str -> array (training checkpoints are refused with a hint).

Storages. A storage is only ever the bytes of the archive's own entry named exactly `<root>/data/<key>`, with
`key` a plain token (letters, digits, underscore; no path), read into a numpy array of the storage's dtype.
The entry's declared size must equal `numel * itemsize` before anything is read. A stored (uncompressed)
entry, which is what torch writes, must physically fit in the file, so storages never take more memory than
the file has bytes; a deflated entry is accepted only while all inflated bytes stay within
`_MAX_INFLATED_BYTES`, and the read is capped at the declared size (zipfile then checks the CRC). Encrypted
entries and other compression methods are refused. Bool storages must hold only 0/1 bytes.

Tensors. `storage_offset`, `size`, `stride` must be Python ints, size/stride tuples of equal length
<= `_MAX_NDIM`, all >= 0; a zero stride only on a dimension of size 0 or 1. For a non-empty tensor the last
element it reaches, `offset + sum((n - 1) * s)`, must lie inside the storage, and its bytes
`prod(size) * itemsize` may not exceed the storage's bytes (no amplification by overlapping strides). An
empty tensor needs `offset <= numel` and its nonzero dims multiplying to <= 2**40. Bytes of all distinct
tensors together may not exceed the bytes of the storages loaded (a repeat of the very same view, e.g. tied
weights, returns the same array and costs nothing). Each tensor is then a copy of a strided view of a
verified array, so its memory is proven in bounds first.

Bounds against small files that ask for huge memory (each `_MAX_*` below): the zip central directory (zipfile
parses it whole: ~10x its size in Python objects), `data.pkl`'s size, the number of objects the pickle may
create, memo indices (the memo is a dict, so a large index never allocates), string/bytes lengths and any
length prefix (checked against the bytes that remain before slicing), FRAME lengths, LONG1 widths. Altogether
a file of N bytes costs O(N) memory (storages about N, their tensors about N again) plus at most a few
hundred MB of pickle objects.

Every refusal or malformation raises `UnsafeCheckpointError` (a ValueError) naming the file, the archive entry
(and the pickle byte offset and opcode) and the rule; `torch` is never imported.
"""

from __future__ import annotations

import collections
import math
import os
import pickle
import pickletools
import re
import struct
import zipfile
import zlib

import ml_dtypes
import numpy as np

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_CALLABLES = ("collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
              "torch._utils._rebuild_parameter_with_state")

_MAX_CENTRAL_DIRECTORY = 16 << 20  # bytes; >= 100k storages. zipfile builds ~500-byte ZipInfo per 46+ bytes
_MAX_PICKLE_BYTES = 16 << 20  # a state dict costs ~100 bytes of pickle per tensor
_MAX_OBJECTS = 1 << 21  # values the pickle may push (MARKs included; each < ~100 bytes): ~25 per tensor
_MAX_MEMO = 1 << 20  # memo indices (the pickler numbers them 0, 1, 2, ...)
_MAX_STR_BYTES = 1 << 16  # one str/bytes value (keys, 'cpu', 'storage')
_MAX_GLOBAL_NAME = 256  # one module or name line of GLOBAL
_MAX_LONG1_BYTES = 16  # ints up to 2**127; torch sizes fit in 8
_MAX_NDIM = 8
_MAX_EMPTY_ELEMENTS = 1 << 40  # product of the nonzero dims of an empty tensor (numpy refuses ~2**63 bytes)
_MAX_INFLATED_BYTES = 256 << 20  # all deflated entries together, inflated; torch itself never compresses
_STORAGE_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")

_OPCODE_NAMES = {op.code.encode("latin-1")[0]: op.name for op in pickletools.opcodes}
_CALLING_OPCODES = {
    "INST": "instantiates an arbitrary class (a way to run code)",
    "OBJ": "instantiates an arbitrary class (a way to run code)",
    "NEWOBJ": "instantiates an arbitrary class (a way to run code)",
    "NEWOBJ_EX": "instantiates an arbitrary class (a way to run code)",
    "EXT1": "loads a global through the copyreg extension registry (a way to run code)",
    "EXT2": "loads a global through the copyreg extension registry (a way to run code)",
    "EXT4": "loads a global through the copyreg extension registry (a way to run code)",
    "PERSID": "text persistent ids are never written by torch.save (it uses BINPERSID)",
}


class UnsafeCheckpointError(ValueError, pickle.UnpicklingError):
    """The checkpoint breaks a rule of what this loader can prove safe to read: the pickle asks for something
    a plain tensor state dict never contains, a tensor or storage is out of bounds, a size is over a bound, or
    the archive is malformed."""


class _Callable:
    """A GLOBAL the interpreter may REDUCE: `name` is "module.qualname" from `_CALLABLES`."""

    def __init__(self, name: str):
        self.name = name


class _StorageType:
    """`torch.<X>Storage`: only usable as the second element of a persistent id."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """The verified contents of `<root>/data/<key>`: `array` is 1-d of `numel` items of the storage dtype."""

    def __init__(self, key: str, storage_type: _StorageType, array: np.ndarray):
        self.key = key
        self.type = storage_type
        self.array = array


def _refuse(where: str, rule: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(f"{where}: {rule}")


def _check_central_directory(f, path: str) -> None:
    """Bounds the central directory zipfile will parse (its size is declared in the end record)."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    tail_len = min(size, 22 + 0xFFFF)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    # The end record zipfile picks: the last 22 bytes if they are one without a comment, else the last
    # signature in the tail.
    if tail[-22:-18] == b"PK\x05\x06" and tail[-2:] == b"\0\0":
        at = len(tail) - 22
    else:
        at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        raise _refuse(path, "no zip end-of-central-directory record")
    end = size - tail_len + at  # file offset of the end record
    (cd_size,) = struct.unpack_from("<I", tail, at + 12)
    if at >= 20 and tail[at - 20:at - 16] == b"PK\x06\x07":  # zip64 locator: zipfile then reads the zip64
        (located,) = struct.unpack_from("<Q", tail, at - 12)  # record (whichever place it looks at)
        sizes = []
        for offset in {located, end - 20 - 56}:
            if 0 <= offset <= size - 56:
                f.seek(offset)
                record = f.read(56)
                if record[:4] == b"PK\x06\x06":
                    sizes.append(struct.unpack_from("<Q", record, 40)[0])
        cd_size = max(sizes, default=cd_size)
    if cd_size > min(size, _MAX_CENTRAL_DIRECTORY):
        raise _refuse(path, f"zip central directory declares {cd_size} bytes; the bound is "
                            f"min(file size {size}, {_MAX_CENTRAL_DIRECTORY})")
    f.seek(0)


class _Archive:
    """The zip archive: bounded entry reads and the storages loaded so far."""

    def __init__(self, path: str, archive: zipfile.ZipFile, file_size: int, root: str):
        self.path = path
        self.zip = archive
        self.file_size = file_size
        self.root = root
        self.inflated = 0  # bytes inflated from deflated entries so far
        self.storages: dict[str, _Storage] = {}
        self.storage_bytes = 0  # bytes of all storages loaded

    def name(self, leaf: str) -> str:
        return f"{self.root}/{leaf}" if self.root else leaf

    def read(self, name: str, size_bound: int | None = None, expected_size: int | None = None) -> bytes:
        """The bytes of entry `name`, its declared size checked (against `size_bound` or `expected_size`)
        before reading and the read capped at that size."""
        where = f"{self.path}: {name}"
        try:
            info = self.zip.getinfo(name)
        except KeyError:
            raise _refuse(where, "entry missing from the archive") from None
        size = info.file_size
        if expected_size is not None and size != expected_size:
            raise _refuse(where, f"entry holds {size} bytes but the pickle declares {expected_size}")
        if size_bound is not None and size > size_bound:
            raise _refuse(where, f"entry declares {size} bytes, over the bound of {size_bound}")
        if info.flag_bits & 0x1:
            raise _refuse(where, "encrypted entry")
        if info.header_offset + 30 + len(info.orig_filename.encode()) + info.compress_size > self.file_size:
            raise _refuse(where, f"entry declares {info.compress_size} bytes of data, more than the file holds")
        if info.compress_type == zipfile.ZIP_STORED:
            if info.compress_size != size:
                raise _refuse(where, f"stored entry declares {size} bytes but occupies {info.compress_size}")
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            if self.inflated + size > _MAX_INFLATED_BYTES:
                raise _refuse(where, f"deflated entry declares {size} bytes; deflated entries may inflate to "
                                     f"{_MAX_INFLATED_BYTES} bytes in all (torch.save writes stored entries: "
                                     "re-save the checkpoint rather than re-zipping it)")
            self.inflated += size
        else:
            raise _refuse(where, f"compression method {info.compress_type} (only stored or deflated entries)")
        try:
            with self.zip.open(info) as f:
                data = f.read(size)  # zipfile inflates at most `size` bytes and checks the CRC at the end
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as exc:
            raise _refuse(where, f"malformed entry ({type(exc).__name__}: {str(exc)[:200]})") from exc
        if len(data) != size:
            raise _refuse(where, f"entry ends after {len(data)} of its {size} bytes")
        return data

    def storage(self, key, storage_type: _StorageType, numel, where: str) -> _Storage:
        """The storage `key` (loaded once) of `numel` items of `storage_type`."""
        if not (isinstance(key, str) and _STORAGE_KEY.fullmatch(key)):
            got = repr(key[:80]) if isinstance(key, str) else f"a {type(key).__name__}"
            raise _refuse(where, f"storage key must be 1-64 letters, digits or underscores (the entry is "
                                 f"<root>/data/<key>), got {got}")
        if type(numel) is not int or numel < 0:
            raise _refuse(where, f"storage {key}: numel must be an int >= 0")
        if key in self.storages:
            known = self.storages[key]
            if known.type.name != storage_type.name or known.array.size != numel:
                raise _refuse(where, f"storage {key} declared again as {numel} x {storage_type.name}, first as "
                                     f"{known.array.size} x {known.type.name}")
            return known
        dtype = storage_type.dtype
        raw = self.read(self.name(f"data/{key}"), expected_size=numel * dtype.itemsize)
        if dtype == np.bool_ and numel and np.frombuffer(raw, np.uint8).max() > 1:
            raise _refuse(where, f"bool storage {key} holds bytes other than 0 and 1")
        array = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
        self.storages[key] = storage = _Storage(key, storage_type, array)
        self.storage_bytes += len(raw)
        return storage


class _Interpreter:
    """Runs the opcodes of `data.pkl` (see the module docstring) over inert values; `run()` -> the object."""

    def __init__(self, data: bytes, archive: _Archive, entry: str):
        self.data = data
        self.archive = archive
        self.entry = entry
        self.pos = 0
        self.at = 0  # offset of the opcode being run
        self.op = ""
        self.stack: list = []
        self.metastack: list[list] = []
        self.memo: dict[int, object] = {}
        self.objects = 0
        self.tensors: dict[tuple, np.ndarray] = {}
        self.tensor_bytes = 0

    # ---------------------------------------------------------------------------------------- plumbing

    def fail(self, rule: str) -> UnsafeCheckpointError:
        return _refuse(f"{self.archive.path}: {self.entry} byte {self.at} ({self.op})", rule)

    def take(self, n: int) -> bytes:
        left = len(self.data) - self.pos
        if n > left:
            raise self.fail(f"argument claims {n} bytes but only {left} remain")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def line(self) -> str:
        end = self.data.find(b"\n", self.pos, self.pos + _MAX_GLOBAL_NAME + 1)
        if end < 0:
            raise self.fail(f"no newline within {_MAX_GLOBAL_NAME} bytes")
        text = self.take(end - self.pos + 1)[:-1]
        try:
            return text.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail("GLOBAL name is not ASCII") from None

    def push(self, obj) -> None:
        self.objects += 1
        if self.objects > _MAX_OBJECTS:
            raise self.fail(f"the pickle pushes more than {_MAX_OBJECTS} values")
        self.stack.append(obj)

    def pop(self):
        if not self.stack:
            raise self.fail("stack underflow")
        return self.stack.pop()

    def top(self):
        if not self.stack:
            raise self.fail("stack underflow")
        return self.stack[-1]

    def pop_mark(self) -> list:
        if not self.metastack:
            raise self.fail("no MARK to pop to")
        items, self.stack = self.stack, self.metastack.pop()
        return items

    def memo_index(self, index: int) -> int:
        if index >= _MAX_MEMO:
            raise self.fail(f"memo index {index} over the bound of {_MAX_MEMO}")
        return index

    def text(self, length: int) -> bytes:
        if length > _MAX_STR_BYTES:
            raise self.fail(f"string of {length} bytes, over the bound of {_MAX_STR_BYTES}")
        return self.take(length)

    def key(self, key):
        if type(key) not in (str, int, float, bool, type(None)):
            raise self.fail(f"dict key is a {type(key).__name__} (only str/int/float/bool/None)")
        return key

    def dict_target(self):
        target = self.top()
        if type(target) not in (dict, collections.OrderedDict):
            raise self.fail(f"SETITEM(S) onto a {type(target).__name__}, not a dict")
        return target

    def list_target(self):
        target = self.top()
        if type(target) is not list:
            raise self.fail(f"APPEND(S) onto a {type(target).__name__}, not a list")
        return target

    # ---------------------------------------------------------------------------------------- the loop

    def run(self):
        handlers = _HANDLERS
        while True:
            if self.pos >= len(self.data):
                self.at, self.op = self.pos, "end"
                raise self.fail("the pickle ends without STOP")
            self.at = self.pos
            code = self.data[self.pos]
            self.pos += 1
            self.op = _OPCODE_NAMES.get(code, f"byte 0x{code:02x}")
            if code == ord("."):  # STOP
                if self.metastack or len(self.stack) != 1:
                    raise self.fail(f"STOP with {len(self.stack)} objects and {len(self.metastack)} open MARKs")
                if self.pos != len(self.data):
                    raise self.fail(f"{len(self.data) - self.pos} bytes after STOP")
                return self.stack[0]
            handler = handlers.get(code)
            if handler is None:
                reason = _CALLING_OPCODES.get(self.op)
                if reason is None:
                    reason = ("not a pickle opcode" if code not in _OPCODE_NAMES
                              else "not an opcode torch.save writes for a state dict")
                raise self.fail(f"opcode refused: {reason}")
            handler(self)

    # ------------------------------------------------------------------------------------ the opcodes

    def op_proto(self):
        if not 2 <= self.take(1)[0] <= 5:
            raise self.fail("pickle protocol must be 2-5")

    def op_frame(self):
        length = self.unpack("<Q")
        if length > len(self.data) - self.pos:
            raise self.fail(f"FRAME claims {length} bytes but only {len(self.data) - self.pos} remain")

    def op_mark(self):
        self.objects += 1
        if self.objects > _MAX_OBJECTS:
            raise self.fail(f"the pickle pushes more than {_MAX_OBJECTS} values")
        self.metastack.append(self.stack)
        self.stack = []

    def op_empty_dict(self):
        self.push({})

    def op_empty_list(self):
        self.push([])

    def op_empty_tuple(self):
        self.push(())

    def op_tuple(self):
        self.push(tuple(self.pop_mark()))

    def op_tuple_n(self, n):
        if len(self.stack) < n:
            raise self.fail("stack underflow")
        items = tuple(self.stack[-n:])
        del self.stack[-n:]
        self.push(items)

    def op_binint(self):
        self.push(self.unpack("<i"))

    def op_binint1(self):
        self.push(self.take(1)[0])

    def op_binint2(self):
        self.push(self.unpack("<H"))

    def op_long1(self):
        width = self.take(1)[0]
        if width > _MAX_LONG1_BYTES:
            raise self.fail(f"LONG1 of {width} bytes, over the bound of {_MAX_LONG1_BYTES}")
        self.push(int.from_bytes(self.take(width), "little", signed=True))

    def op_binfloat(self):
        self.push(self.unpack(">d"))

    def op_const(self, value):
        self.push(value)

    def op_unicode(self, fmt):
        try:
            self.push(self.text(self.unpack(fmt)).decode("utf-8", "surrogatepass"))
        except UnicodeDecodeError:
            raise self.fail("string is not UTF-8") from None

    def op_bytes(self, fmt):
        self.push(self.text(self.unpack(fmt)))

    def op_put(self, fmt):
        self.memo[self.memo_index(self.unpack(fmt))] = self.top()

    def op_memoize(self):
        self.memo[self.memo_index(len(self.memo))] = self.top()

    def op_get(self, fmt):
        index = self.unpack(fmt)
        if index not in self.memo:
            raise self.fail(f"memo entry {index} was never stored")
        self.push(self.memo[index])

    def op_setitem(self):
        value = self.pop()
        key = self.key(self.pop())
        self.dict_target()[key] = value

    def op_setitems(self):
        items = self.pop_mark()
        if len(items) % 2:
            raise self.fail("SETITEMS with an odd number of items")
        target = self.dict_target()
        for i in range(0, len(items), 2):
            target[self.key(items[i])] = items[i + 1]

    def op_append(self):
        value = self.pop()
        self.list_target().append(value)

    def op_appends(self):
        items = self.pop_mark()
        self.list_target().extend(items)

    def op_global(self):
        self.resolve(self.line(), self.line())

    def op_stack_global(self):
        name, module = self.pop(), self.pop()
        if type(module) is not str or type(name) is not str:
            raise self.fail("STACK_GLOBAL needs two strings")
        self.resolve(module, name)

    def resolve(self, module: str, name: str):
        dotted = f"{module}.{name}"
        if dotted in _CALLABLES:
            self.push(_Callable(dotted))
        elif module == "torch" and name in _STORAGE_DTYPES:
            self.push(_StorageType(name))
        else:
            raise self.fail(f"refusing to load {dotted[:200]}: a state-dict checkpoint only holds tensors; this "
                            "file may run code when unpickled and is not read")

    def op_reduce(self):
        args = self.pop()
        func = self.pop()
        if not isinstance(func, _Callable):
            raise self.fail(f"REDUCE on a {type(func).__name__}: only {', '.join(_CALLABLES)} may be called")
        if type(args) is not tuple:
            raise self.fail(f"REDUCE arguments are a {type(args).__name__}, not a tuple")
        if func.name == "collections.OrderedDict":
            if args:
                raise self.fail("OrderedDict() takes no arguments here (items come by SETITEMS)")
            self.push(collections.OrderedDict())
        elif func.name == "torch._utils._rebuild_tensor_v2":
            self.push(self.rebuild_tensor(*self.signature(args, func.name, 6, 7)))
        else:  # _rebuild_parameter(data, requires_grad, backward_hooks[, state]): the tensor itself
            n = 4 if func.name.endswith("_with_state") else 3
            data, requires_grad, hooks, *state = self.signature(args, func.name, n, n)
            self.check_flags(requires_grad, hooks, None)
            if not isinstance(data, np.ndarray):
                raise self.fail(f"{func.name} of a {type(data).__name__}, not a rebuilt tensor")
            if state and state[0] is not None and type(state[0]) is not dict:
                raise self.fail(f"{func.name} state is a {type(state[0]).__name__}, not a dict")
            self.push(data)

    def signature(self, args: tuple, name: str, low: int, high: int) -> tuple:
        if not low <= len(args) <= high:
            raise self.fail(f"{name} takes {low}-{high} arguments, got {len(args)}")
        return args + (None,) * (high - len(args))

    def check_flags(self, requires_grad, hooks, metadata):
        if type(requires_grad) is not bool:
            raise self.fail("requires_grad must be a bool")
        if type(hooks) not in (dict, collections.OrderedDict) or hooks:
            raise self.fail("backward_hooks must be an empty dict")
        if metadata is not None and (type(metadata) is not dict or metadata):
            raise self.fail("tensor metadata (e.g. conjugate/negative-bit views) is not supported; "
                            "save tensor.resolve_conj().resolve_neg()")

    def op_build(self):
        state = self.pop()
        target = self.top()
        if type(target) not in (dict, collections.OrderedDict):
            raise self.fail(f"BUILD on a {type(target).__name__}: only a state dict's OrderedDict takes state")
        if state is not None and not (type(state) is dict and set(state) <= {"_metadata"}):
            raise self.fail("BUILD state must be None or {'_metadata': ...} (what module.state_dict() holds)")

    def op_binpersid(self):
        pid = self.pop()
        if not (type(pid) is tuple and len(pid) == 5 and type(pid[0]) is str and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and type(pid[3]) is str):
            raise self.fail("persistent id must be ('storage', torch.<X>Storage, key, location, numel)")
        _, storage_type, key, _location, numel = pid
        where = f"{self.archive.path}: {self.entry} byte {self.at} ({self.op})"
        self.push(self.archive.storage(key, storage_type, numel, where))

    # --------------------------------------------------------------------------------------- tensors

    def rebuild_tensor(self, storage, offset, size, stride, requires_grad, hooks, metadata) -> np.ndarray:
        """`_rebuild_tensor_v2`: the array of shape `size` whose element i sits at storage index
        `offset + sum(i_d * stride_d)`, built only after every index is proven inside the storage."""
        self.check_flags(requires_grad, hooks, metadata)
        if not isinstance(storage, _Storage):
            raise self.fail(f"tensor storage is a {type(storage).__name__}, not a storage from a persistent id")
        if type(offset) is not int or offset < 0:
            raise self.fail("storage_offset must be an int >= 0")
        if type(size) is not tuple or type(stride) is not tuple or len(size) != len(stride):
            raise self.fail("size and stride must be tuples of equal length")
        if len(size) > _MAX_NDIM:
            raise self.fail(f"{len(size)} dimensions, over the bound of {_MAX_NDIM}")
        if not all(type(v) is int and v >= 0 for v in size + stride):
            raise self.fail(f"size {size} / stride {stride} must be ints >= 0")
        if any(s == 0 and n > 1 for n, s in zip(size, stride)):
            raise self.fail(f"zero stride on a dimension of size > 1 (size {size}, stride {stride})")
        dtype, items = storage.array.dtype, storage.array.size
        count = math.prod(size)
        where = f"tensor of size {size}, stride {stride}, offset {offset} on storage {storage.key} ({items} items)"
        if count == 0:
            if offset > items or math.prod(n for n in size if n) > _MAX_EMPTY_ELEMENTS:
                raise self.fail(f"empty {where}: offset past the storage or dims too large")
        else:
            last = offset + sum((n - 1) * s for n, s in zip(size, stride))
            if last >= items:
                raise self.fail(f"{where} reaches item {last}, outside the storage")
            if count > items:
                raise self.fail(f"{where} has {count} items, more than its storage (overlapping strides)")
        signature = (storage.key, offset, size, stride)
        if signature in self.tensors:
            return self.tensors[signature]
        nbytes = count * dtype.itemsize
        if self.tensor_bytes + nbytes > self.archive.storage_bytes:
            raise self.fail(f"tensors would take more than the {self.archive.storage_bytes} bytes of their "
                            "storages (the same bytes viewed over and over)")
        self.tensor_bytes += nbytes
        if count == 0:
            tensor = np.empty(size, dtype)
        else:
            tensor = np.lib.stride_tricks.as_strided(
                storage.array[offset:], shape=size, strides=tuple(s * dtype.itemsize for s in stride)).copy()
        self.tensors[signature] = tensor
        return tensor


_HANDLERS = {
    0x80: _Interpreter.op_proto, 0x95: _Interpreter.op_frame, ord("("): _Interpreter.op_mark,
    ord("}"): _Interpreter.op_empty_dict, ord("]"): _Interpreter.op_empty_list,
    ord(")"): _Interpreter.op_empty_tuple, ord("t"): _Interpreter.op_tuple,
    0x85: lambda self: self.op_tuple_n(1), 0x86: lambda self: self.op_tuple_n(2),
    0x87: lambda self: self.op_tuple_n(3),
    ord("J"): _Interpreter.op_binint, ord("K"): _Interpreter.op_binint1, ord("M"): _Interpreter.op_binint2,
    0x8A: _Interpreter.op_long1, ord("G"): _Interpreter.op_binfloat,
    ord("N"): lambda self: self.op_const(None), 0x88: lambda self: self.op_const(True),
    0x89: lambda self: self.op_const(False),
    ord("X"): lambda self: self.op_unicode("<I"), 0x8C: lambda self: self.op_unicode("<B"),
    0x8D: lambda self: self.op_unicode("<Q"),
    ord("C"): lambda self: self.op_bytes("<B"), ord("B"): lambda self: self.op_bytes("<I"),
    0x8E: lambda self: self.op_bytes("<Q"),
    ord("q"): lambda self: self.op_put("<B"), ord("r"): lambda self: self.op_put("<I"),
    0x94: _Interpreter.op_memoize,
    ord("h"): lambda self: self.op_get("<B"), ord("j"): lambda self: self.op_get("<I"),
    ord("s"): _Interpreter.op_setitem, ord("u"): _Interpreter.op_setitems,
    ord("a"): _Interpreter.op_append, ord("e"): _Interpreter.op_appends,
    ord("c"): _Interpreter.op_global, 0x93: _Interpreter.op_stack_global,
    ord("R"): _Interpreter.op_reduce, ord("b"): _Interpreter.op_build, ord("Q"): _Interpreter.op_binpersid,
}


def _load(path: str, f) -> dict[str, np.ndarray]:
    _check_central_directory(f, path)
    file_size = f.seek(0, os.SEEK_END)
    f.seek(0)
    with zipfile.ZipFile(f) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise _refuse(path, f"expected one data.pkl in the archive, found {len(pickles)}: "
                                f"{[n[:100] for n in pickles[:4]]}")
        root = pickles[0][: -len("/data.pkl")] if "/" in pickles[0] else ""
        store = _Archive(path, archive, file_size, root)
        byteorder = store.name("byteorder")
        if byteorder in archive.NameToInfo and store.read(byteorder, size_bound=16).strip() != b"little":
            raise _refuse(f"{path}: {byteorder}", "big-endian torch checkpoints are not supported")
        data = store.read(pickles[0], size_bound=_MAX_PICKLE_BYTES)
        state = _Interpreter(data, store, pickles[0]).run()
    if not (type(state) in (dict, collections.OrderedDict)
            and all(type(k) is str and isinstance(v, np.ndarray) for k, v in state.items())):
        raise _refuse(path, f"does not hold a state dict of tensors (got {type(state).__name__}); training "
                            "checkpoints (checkpoint.pth) must be reduced to the model's state_dict")
    return dict(state)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """`pytorch_model.bin` -> {key: numpy array (the tensor's shape and dtype, C-contiguous)} in file order,
    without importing torch or executing pickled code. Raises `UnsafeCheckpointError` (a ValueError) naming the
    file, the entry and the rule for anything outside the format described in the module docstring, and
    ValueError for a legacy (non-zip) checkpoint."""
    with open(path, "rb") as f:
        if not zipfile.is_zipfile(f):
            raise ValueError(
                f"{path} is not a zip-format torch checkpoint (torch >= 1.6 `torch.save`). Re-save it with "
                "torch.save(state_dict, path) in a recent torch, or convert it to model.safetensors")
        try:
            return _load(path, f)
        except (UnsafeCheckpointError, MemoryError):
            raise
        except Exception as exc:  # zipfile/zlib/struct/OS errors from a malformed archive
            raise UnsafeCheckpointError(
                f"{path}: malformed zip archive ({type(exc).__name__}: {str(exc)[:300]})") from exc
