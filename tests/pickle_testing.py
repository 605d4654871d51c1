"""A small writer of torch-format pickles and checkpoint archives, opcode by opcode (torch is never imported),
for the tests of untrusted checkpoint files."""

import struct
import zipfile

import numpy as np

# ------------------------------------------------------------------------------ a small pickle writer
# Each helper returns the opcode bytes that push one value, in the shapes torch.save (protocol 2) writes.


def u(text: str) -> bytes:  # BINUNICODE
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def i(n: int) -> bytes:  # BININT1 / BININT2 / BININT / LONG1, as the pickler picks them
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if 0 <= n < 65536:
        return b"M" + struct.pack("<H", n)
    if -2**31 <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def tup(*items: bytes) -> bytes:  # MARK ... TUPLE
    return b"(" + b"".join(items) + b"t"


def glob(module: str, name: str) -> bytes:  # GLOBAL
    return b"c" + f"{module}\n{name}\n".encode()


def odict() -> bytes:  # collections.OrderedDict()
    return glob("collections", "OrderedDict") + b")R"


def storage(key: str, numel: int, kind: str = "FloatStorage") -> bytes:  # BINPERSID of a storage
    return tup(u("storage"), glob("torch", kind), u(key), u("cpu"), i(numel)) + b"Q"


def tensor(store: bytes, offset, size, stride, *, grad=b"\x89", hooks=None, extra=b"") -> bytes:
    """_rebuild_tensor_v2(store, offset, size, stride, requires_grad, backward_hooks[, extra])."""
    ints = lambda values: tup(*(i(v) for v in values)) if isinstance(values, tuple) else values  # noqa: E731
    offset = i(offset) if isinstance(offset, int) else offset
    return glob("torch._utils", "_rebuild_tensor_v2") + tup(
        store, offset, ints(size), ints(stride), grad, odict() if hooks is None else hooks, extra) + b"R"


def state_dict(items: dict, *, top: bytes = b"}", tail: bytes = b"") -> bytes:
    """PROTO 2, the top-level dict (`top`), its items by SETITEMS, `tail` (e.g. a BUILD), STOP."""
    return b"\x80\x02" + top + b"(" + b"".join(u(k) + v for k, v in items.items()) + b"u" + tail + b"."


def write_archive(path, pickled: bytes, storages: dict, root: str = "archive") -> str:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{root}/data.pkl", pickled)
        archive.writestr(f"{root}/byteorder", "little")
        for key, data in storages.items():
            archive.writestr(f"{root}/data/{key}", data)
        archive.writestr(f"{root}/version", "3\n")
    return str(path)


def patch_entry(path, name: str, **fields) -> None:
    """Rewrites `method`, `crc`, `compress_size` or `file_size` of entry `name` in its local header and in
    its central-directory record (what a hostile zip writer can put there)."""
    blob = bytearray(open(path, "rb").read())
    layouts = ((b"PK\x03\x04", 26, 30, {"method": 8, "crc": 14, "compress_size": 18, "file_size": 22}),
               (b"PK\x01\x02", 28, 46, {"method": 10, "crc": 16, "compress_size": 20, "file_size": 24}))
    for signature, length_at, name_at, offsets in layouts:
        at, found = blob.find(signature), False
        while at >= 0:
            (length,) = struct.unpack_from("<H", blob, at + length_at)
            if blob[at + name_at:at + name_at + length] == name.encode():
                for field, value in fields.items():
                    struct.pack_into("<H" if field == "method" else "<I", blob, at + offsets[field], value)
                found = True
            at = blob.find(signature, at + 4)
        assert found, name
    open(path, "wb").write(bytes(blob))


F32 = np.arange(12, dtype=np.float32)


def one_tensor(tmp_path, body: bytes, storages=None, name="bad.bin") -> str:
    """A checkpoint whose only tensor is `body`, beside the 12-float storage "0" (= F32)."""
    return write_archive(tmp_path / name, state_dict({"w": body}), {"0": F32.tobytes()} if storages is None
                         else storages)
