"""sedd_jax.torch_pickle against crafted `pytorch_model.bin` files: legitimate variants load exactly; stride,
offset, storage, memory-bomb and code-execution attacks are refused with a clear rule, in bounded memory,
without running anything. The pickles are written opcode by opcode below (torch is never imported)."""

import hashlib
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib

import ml_dtypes
import numpy as np
import pytest

from sedd_jax import torch_pickle
from tests.conftest import TINY_CHECKPOINT
from tests.pickle_testing import (F32, glob, i, odict, one_tensor, patch_entry, state_dict, storage, tensor, tup,
                                  u, write_archive)

Refused = torch_pickle.UnsafeCheckpointError

# ---------------------------------------------------------------------------------- legitimate files

def test_error_type_is_value_error_and_unpickling_error():
    assert issubclass(Refused, ValueError) and issubclass(Refused, pickle.UnpicklingError)


def test_fixture_loads_bit_identically_to_its_storage_bytes():
    """The official-format fixture: 31 contiguous float32 tensors, tensor k on storage entry data/k."""
    path = TINY_CHECKPOINT / "pytorch_model.bin"
    state = torch_pickle.load_state_dict(str(path))
    with zipfile.ZipFile(path) as archive:
        raw = [archive.read(f"pytorch_model/data/{k}") for k in range(len(state))]
        assert f"pytorch_model/data/{len(state)}" not in archive.namelist()
    assert len(state) == 31 and next(iter(state)) == "vocab_embed.embedding"
    digest = hashlib.sha256()
    for k, (key, value) in enumerate(state.items()):
        assert value.dtype == np.float32 and value.flags.c_contiguous and value.flags.writeable, key
        assert value.tobytes() == raw[k], key
        digest.update(value.tobytes())
    assert digest.hexdigest() == hashlib.sha256(b"".join(raw)).hexdigest()
    assert state["vocab_embed.embedding"].shape == (51, 64) and state["blocks.0.attn_qkv.weight"].shape == (192, 64)
    assert state["rotary_emb.inv_freq"].shape == (8,)
    assert "torch" not in sys.modules


def test_legit_variants_torch_writes(tmp_path):
    """Views with an offset into a shared storage, a transposed stride, a repeated (tied) view, bf16 / fp16 /
    int64 / bool storages, a 0-d and an empty tensor, a size-1 dim with stride 0, an nn.Parameter, and the
    OrderedDict top level with `_metadata` set by BUILD (what `torch.save(model.state_dict())` writes)."""
    bf16 = np.array([1.5, -2.0, 3.25, 0.0], ml_dtypes.bfloat16)
    half = np.array([0.5, 65504.0, -1.0], np.float16)
    longs = np.array([7, 2**40 + 3], np.int64)
    storages = {"0": F32.tobytes(), "1": np.arange(6, dtype=np.float32).tobytes(), "2": bf16.tobytes(),
                "3": half.tobytes(), "4": longs.tobytes(), "5": np.float32(4.5).tobytes(), "6": b"",
                "7": bytes([1, 0]), "8": np.arange(3, dtype=np.float32).tobytes(), "9": F32[:4].tobytes()}
    shared = storage("0", 12)
    items = {
        "a": tensor(shared, 0, (2, 3), (3, 1)),
        "b": tensor(storage("0", 12), 6, (2, 3), (3, 1)),  # the second half of the same storage
        "tied": tensor(storage("0", 12), 0, (2, 3), (3, 1)),  # the very same view again
        "t": tensor(storage("1", 6), 0, (3, 2), (1, 3)),  # a transposed (3, 2) view of a (2, 3) tensor
        "bf": tensor(storage("2", 4, "BFloat16Storage"), 0, (4,), (1,)),
        "h": tensor(storage("3", 3, "HalfStorage"), 0, (3,), (1,)),
        "l": tensor(storage("4", 2, "LongStorage"), 0, (2,), (1,)),
        "scalar": tensor(storage("5", 1), 0, (), ()),
        "empty": tensor(storage("6", 0), 0, (0, 768), (768, 1)),
        "mask": tensor(storage("7", 2, "BoolStorage"), 0, (2,), (1,)),
        "expanded": tensor(storage("8", 3), 0, (1, 3), (0, 1)),
        "param": glob("torch._utils", "_rebuild_parameter") + tup(
            tensor(storage("9", 4), 0, (2, 2), (2, 1)), b"\x88", odict()) + b"R",
    }
    metadata = b"}" + u("_metadata") + odict() + b"(" + u("") + b"}" + u("version") + i(1) + b"s" + b"us" + b"b"
    path = write_archive(tmp_path / "legit.bin", state_dict(items, top=odict(), tail=metadata), storages)
    state = torch_pickle.load_state_dict(path)
    assert list(state) == list(items)
    np.testing.assert_array_equal(state["a"], F32[:6].reshape(2, 3))
    np.testing.assert_array_equal(state["b"], F32[6:].reshape(2, 3))
    assert state["tied"] is state["a"]  # shared storage and view, like torch's tied weights
    np.testing.assert_array_equal(state["t"], np.arange(6, dtype=np.float32).reshape(2, 3).T)
    assert state["t"].flags.c_contiguous
    for key, want in (("bf", bf16), ("h", half), ("l", longs)):
        assert state[key].dtype == want.dtype and state[key].tobytes() == want.tobytes(), key
    assert state["scalar"].shape == () and state["scalar"] == np.float32(4.5)
    assert state["empty"].shape == (0, 768) and state["empty"].dtype == np.float32
    assert state["mask"].dtype == np.bool_ and state["mask"].tolist() == [True, False]
    np.testing.assert_array_equal(state["expanded"], [[0.0, 1.0, 2.0]])
    np.testing.assert_array_equal(state["param"], F32[:4].reshape(2, 2))


def test_protocol_4_opcodes(tmp_path):
    """FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL, BINGET: the same tensor as torch.save(pickle_protocol=4)."""
    def short(text):
        return b"\x8c" + bytes([len(text)]) + text.encode() + b"\x94"
    body = (b"}\x94" + short("w") + short("torch._utils") + short("_rebuild_tensor_v2") + b"\x93\x94"
            + b"(" + b"(" + short("storage") + short("torch") + short("FloatStorage") + b"\x93\x94" + short("0")
            + short("cpu") + b"K\x0ct\x94Q" + b"K\x00" + b"K\x03K\x04\x86\x94" + b"K\x04K\x01\x86\x94" + b"\x89"
            + short("collections") + short("OrderedDict") + b"\x93\x94)R\x94t\x94R\x94" + b"s.")
    pickled = b"\x80\x04\x95" + struct.pack("<Q", len(body)) + body
    path = write_archive(tmp_path / "p4.bin", pickled, {"0": F32.tobytes()})
    np.testing.assert_array_equal(torch_pickle.load_state_dict(path)["w"], F32.reshape(3, 4))


def test_deflated_entries_within_the_bound_load(tmp_path):
    path = tmp_path / "deflated.bin"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", state_dict({"w": tensor(storage("0", 12), 0, (12,), (1,))}))
        archive.writestr("archive/data/0", F32.tobytes())
    np.testing.assert_array_equal(torch_pickle.load_state_dict(str(path))["w"], F32)


# ----------------------------------------------------------------------------- tensor and storage rules

BAD_TENSORS = {
    "cancelling strides": (tensor(storage("0", 12), 0, (2, 2), (2**40, -2**40)), "must be ints >= 0"),
    "negative stride": (tensor(storage("0", 12), 11, (12,), (-1,)), "must be ints >= 0"),
    "negative offset": (tensor(storage("0", 12), -4, (4,), (1,)), r"storage_offset must be an int >= 0"),
    "offset past the end": (tensor(storage("0", 12), 12, (1,), (1,)), "reaches item 12, outside the storage"),
    "huge offset": (tensor(storage("0", 12), 2**62, (1,), (1,)), "outside the storage"),
    "0-d past the end": (tensor(storage("0", 12), 12, (), ()), "reaches item 12, outside the storage"),
    "storage shorter than the tensor": (tensor(storage("0", 12), 0, (4, 4), (4, 1)), "reaches item 15"),
    "zero stride amplifying": (tensor(storage("0", 12), 0, (2**19, 12), (0, 1)), "zero stride on a dimension"),
    "overlapping strides": (tensor(storage("0", 12), 0, (6, 6), (1, 1)), "36 items, more than its storage"),
    "empty tensor past the end": (tensor(storage("0", 12), 13, (0,), (1,)), "offset past the storage"),
    "empty tensor of huge dims": (tensor(storage("0", 12), 0, (0, 2**31, 2**31), (1, 1, 1)), "dims too large"),
    "too many dims": (tensor(storage("0", 12), 0, (1,) * 9, (1,) * 9), "9 dimensions, over the bound of 8"),
    "float size": (tensor(storage("0", 12), 0, b"(G" + struct.pack(">d", 2.0) + b"t", (1,)), "must be ints"),
    "bool size": (tensor(storage("0", 12), 0, b"(\x88t", (1,)), "must be ints"),
    "size and stride lengths": (tensor(storage("0", 12), 0, (2, 2), (1,)), "tuples of equal length"),
    "size as a list": (tensor(storage("0", 12), 0, b"]K\x02a", b"]K\x01a"), "tuples of equal length"),
    "storage is a dict with __array_interface__": (
        tensor(b"}" + u("__array_interface__") + b"}" + u("data") + tup(i(0xDEADBEEF), b"\x89") + b"ss", 0,
               (4,), (1,)), "tensor storage is a dict, not a storage from a persistent id"),
    "storage is an OrderedDict given __array_interface__ by BUILD": (
        tensor(odict() + b"}" + u("__array_interface__") + b"}" + u("data") + tup(i(0xDEADBEEF), b"\x89")
               + b"ssb", 0, (4,), (1,)), r"BUILD state must be None or \{'_metadata'"),
    "non-empty tensor metadata": (tensor(storage("0", 12), 0, (4,), (1,), extra=b"}" + u("neg") + b"\x88s"),
                                  "tensor metadata"),
    "requires_grad not a bool": (tensor(storage("0", 12), 0, (4,), (1,), grad=i(1)), "requires_grad must be a bool"),
    "backward hooks": (tensor(storage("0", 12), 0, (4,), (1,), hooks=b"}" + u("h") + i(1) + b"s"),
                       "backward_hooks must be an empty dict"),
    "parameter of a non-tensor": (glob("torch._utils", "_rebuild_parameter") + tup(u("x"), b"\x89", odict()) + b"R",
                                  "_rebuild_parameter of a str"),
}


@pytest.mark.parametrize("case", list(BAD_TENSORS))
def test_bad_tensors_are_refused(tmp_path, case):
    body, message = BAD_TENSORS[case]
    path = one_tensor(tmp_path, body)
    with pytest.raises(Refused, match=message) as error:
        torch_pickle.load_state_dict(path)
    assert path in str(error.value) and "archive/data.pkl byte" in str(error.value)


def test_repeated_views_cannot_amplify_memory(tmp_path):
    items = {f"w{k}": tensor(storage("0", 12), k, (11,), (1,)) for k in range(2)}  # 88 bytes of a 48-byte storage
    path = write_archive(tmp_path / "views.bin", state_dict(items), {"0": F32.tobytes()})
    with pytest.raises(Refused, match="more than the 48 bytes of their storages"):
        torch_pickle.load_state_dict(path)


def test_storage_redeclared_with_another_type(tmp_path):
    items = {"a": tensor(storage("0", 12), 0, (4,), (1,)), "b": tensor(storage("0", 6, "DoubleStorage"), 0, (1,), (1,))}
    path = write_archive(tmp_path / "types.bin", state_dict(items), {"0": F32.tobytes()})
    with pytest.raises(Refused, match="storage 0 declared again as 6 x DoubleStorage, first as 12 x FloatStorage"):
        torch_pickle.load_state_dict(path)


@pytest.mark.parametrize("key", ["../../etc/passwd", "/etc/passwd", "a/b", "..", "", "0\x00", "x" * 65])
def test_storage_keys_are_plain_tokens(tmp_path, key):
    path = one_tensor(tmp_path, tensor(storage(key, 12), 0, (4,), (1,)))
    with pytest.raises(Refused, match="storage key must be 1-64 letters, digits or underscores"):
        torch_pickle.load_state_dict(path)


@pytest.mark.parametrize("numel, data, message", [
    (12, F32[:8].tobytes(), "entry holds 32 bytes but the pickle declares 48"),  # storage shorter than declared
    (4, F32.tobytes(), "entry holds 48 bytes but the pickle declares 16"),  # longer: sizes must agree exactly
])
def test_storage_entry_size_must_match_numel(tmp_path, numel, data, message):
    path = one_tensor(tmp_path, tensor(storage("0", numel), 0, (4,), (1,)), {"0": data})
    with pytest.raises(Refused, match=message):
        torch_pickle.load_state_dict(path)


def test_missing_storage_entry_and_bad_bool(tmp_path):
    path = one_tensor(tmp_path, tensor(storage("7", 4), 0, (4,), (1,)))
    with pytest.raises(Refused, match="archive/data/7: entry missing from the archive"):
        torch_pickle.load_state_dict(path)
    path = one_tensor(tmp_path, tensor(storage("0", 2, "BoolStorage"), 0, (2,), (1,)), {"0": b"\x01\x02"})
    with pytest.raises(Refused, match="bool storage 0 holds bytes other than 0 and 1"):
        torch_pickle.load_state_dict(path)


def test_corrupt_archives_raise_value_errors(tmp_path):
    good = one_tensor(tmp_path, tensor(storage("0", 12), 0, (12,), (1,)), name="good.bin")
    blob = open(good, "rb").read()
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(blob[: len(blob) // 2] + blob[-22:])  # the end record survives, the rest does not
    flipped = tmp_path / "flipped.bin"
    at = blob.find(F32.tobytes())
    flipped.write_bytes(blob[:at] + b"\xff" + blob[at + 1:])  # a storage byte: its CRC no longer matches
    for path, message in ((truncated, "malformed zip archive \\(BadZipFile"),
                          (flipped, "archive/data/0: malformed entry \\(BadZipFile: Bad CRC-32")):
        with pytest.raises(Refused, match=message) as error:
            torch_pickle.load_state_dict(str(path))
        assert str(error.value).startswith(str(path))
    (tmp_path / "legacy.bin").write_bytes(b"\x80\x02legacy")
    with pytest.raises(ValueError, match="not a zip-format torch checkpoint"):
        torch_pickle.load_state_dict(str(tmp_path / "legacy.bin"))


@pytest.mark.parametrize("pickled, message", [
    (b"\x80\x02]\x94.", r"does not hold a state dict of tensors \(got list\)"),
    (b"\x80\x02}(X\x01\x00\x00\x00kK\x01u.", r"does not hold a state dict of tensors \(got dict\)"),
    (b"\x80\x02}(K\x01K\x01u", "ends without STOP"),
    (b"\x80\x02}.junk", "4 bytes after STOP"),
    (b"\x80\x02}}.", "STOP with 2 objects"),
    (b"\x80\x02u.", "no MARK to pop to"),
    (b"\x80\x02s.", "stack underflow"),
    (b"\x80\x02}(X\x01\x00\x00\x00\xffK\x01u.", "string is not UTF-8"),
    (b"\x80\x02}(K\x01K\x02K\x03u.", "odd number of items"),
    (b"\x80\x02}((K\x01tK\x01u.", "dict key is a tuple"),  # hashing nested tuples could recurse
    (b"\x80\x02](K\x01K\x02u.", "SETITEM\\(S\\) onto a list"),
    (b"\x80\x02}K\x01a.", "APPEND\\(S\\) onto a dict"),
    (b"\x80\x02h\x05.", "memo entry 5 was never stored"),
    (b"\x80\x02q\x00.", "stack underflow"),
    (b"\x80\x01}.", "pickle protocol must be 2-5"),
    (b"\x80\x02\x8a\x40" + bytes(64) + b".", "LONG1 of 64 bytes"),
    (b"\x80\x02}\xff.", "not a pickle opcode"),
    (b"\x80\x02}2.", r"\(DUP\): opcode refused: not an opcode torch.save writes"),
    (b"\x80\x02I1\n.", r"\(INT\): opcode refused"),
])
def test_malformed_pickles_are_refused(tmp_path, pickled, message):
    path = write_archive(tmp_path / "bad.bin", pickled, {})
    with pytest.raises(Refused, match=message):
        torch_pickle.load_state_dict(path)


def test_deeply_nested_values_are_harmless(tmp_path):
    depth = 200_000  # far past the recursion limit: nothing recurses over values from the file
    pickled = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
    path = write_archive(tmp_path / "deep.bin", pickled, {})
    with pytest.raises(Refused, match=r"got list"):
        torch_pickle.load_state_dict(path)


# ------------------------------------------------------------------------------------- code payloads

def payloads(marker: str) -> dict:
    """Pickles that would run `touch marker` (or instantiate a class) through every opcode that can call."""
    command = u(f"touch {marker}")
    stack_global = b"\x8c\x02os\x94\x8c\x06system\x94\x93"
    return {
        "GLOBAL + REDUCE": (b"\x80\x02" + glob("os", "system") + tup(command) + b"R.", "refusing to load os.system"),
        "GLOBAL posix.system in a value": (state_dict({"w": glob("posix", "system") + tup(command) + b"R"}),
                                           "refusing to load posix.system"),
        "GLOBAL builtins.eval": (b"\x80\x02" + glob("builtins", "eval") + tup(u("1")) + b"R.",
                                 "refusing to load builtins.eval"),
        "GLOBAL torch.load": (b"\x80\x02" + glob("torch", "load") + b".", "refusing to load torch.load"),
        "GLOBAL numpy reconstruct": (b"\x80\x02" + glob("numpy.core.multiarray", "_reconstruct") + b".",
                                     "refusing to load numpy.core.multiarray._reconstruct"),
        "GLOBAL attribute of an allowed name": (b"\x80\x02" + glob("collections", "OrderedDict.fromkeys") + b".",
                                                "refusing to load collections.OrderedDict.fromkeys"),
        "STACK_GLOBAL": (b"\x80\x04" + stack_global + tup(command) + b"R.", "refusing to load os.system"),
        "STACK_GLOBAL of a non-string": (b"\x80\x04K\x01K\x02\x93.", "STACK_GLOBAL needs two strings"),
        "INST": (b"\x80\x02(" + command + b"ios\nsystem\n.", r"\(INST\): opcode refused: instantiates"),
        "OBJ": (b"\x80\x02(" + glob("collections", "OrderedDict") + command + b"o.", r"\(OBJ\): opcode refused"),
        "NEWOBJ": (b"\x80\x02" + glob("collections", "OrderedDict") + b")\x81.", r"\(NEWOBJ\): opcode refused"),
        "NEWOBJ_EX": (b"\x80\x04" + glob("collections", "OrderedDict") + b")}\x92.", r"\(NEWOBJ_EX\): opcode refused"),
        "BUILD with __setstate__": (b"\x80\x02" + odict() + b"}" + u("__setstate__") + command + b"sb.",
                                    r"BUILD state must be None or \{'_metadata'"),
        "BUILD on a tensor": (state_dict({"w": tensor(storage("0", 12), 0, (4,), (1,)) + b"}b"}),
                              "BUILD on a ndarray"),
        "BUILD on an allowed callable": (b"\x80\x02" + glob("collections", "OrderedDict") + b"}b.",
                                         "BUILD on a _Callable"),
        "REDUCE on a storage type": (b"\x80\x02" + glob("torch", "FloatStorage") + tup(i(4)) + b"R.",
                                     "REDUCE on a _StorageType"),
        "REDUCE on a string": (b"\x80\x02" + command + tup() + b"R.", "REDUCE on a str"),
        "REDUCE with non-tuple args": (b"\x80\x02" + glob("collections", "OrderedDict") + b"]R.",
                                       "REDUCE arguments are a list"),
        "OrderedDict with items": (b"\x80\x02" + glob("collections", "OrderedDict") + tup(b"]") + b"R.",
                                   "OrderedDict\\(\\) takes no arguments"),
        "EXT1": (b"\x80\x02\x82\x01)R.", r"\(EXT1\): opcode refused: loads a global through the copyreg"),
        "EXT2": (b"\x80\x02\x83\x01\x00)R.", r"\(EXT2\): opcode refused"),
        "EXT4": (b"\x80\x02\x84\x01\x00\x00\x00)R.", r"\(EXT4\): opcode refused"),
        "PERSID": (b"\x80\x02P" + f"touch {marker}".encode() + b"\n.", r"\(PERSID\): opcode refused: text"),
        "BINPERSID of a string": (b"\x80\x02" + command + b"Q.", "persistent id must be"),
        "BINPERSID naming os.system": (b"\x80\x02" + tup(u("storage"), glob("os", "system"), u("0"), u("cpu"), i(1))
                                       + b"Q.", "refusing to load os.system"),
        "BINPERSID of a non-storage type": (b"\x80\x02" + tup(u("storage"), odict(), u("0"), u("cpu"), i(1)) + b"Q.",
                                            "persistent id must be"),
        "BINPERSID of another kind": (b"\x80\x02" + tup(u("module"), glob("torch", "FloatStorage"), u("0"), u("cpu"),
                                                        i(1)) + b"Q.", "persistent id must be"),
    }


@pytest.mark.parametrize("case", list(payloads("m")))
def test_code_payloads_are_refused_without_running(tmp_path, case):
    marker = tmp_path / "pwned"
    pickled, message = payloads(str(marker))[case]
    path = write_archive(tmp_path / "evil.bin", pickled, {"0": F32.tobytes()})
    with pytest.raises(Refused, match=message):
        torch_pickle.load_state_dict(path)
    assert not marker.exists()


def test_the_payload_is_live(tmp_path):
    """Control: the standard unpickler does run the GLOBAL + REDUCE payload above."""
    marker = tmp_path / "pwned"
    pickle.loads(payloads(str(marker))["GLOBAL + REDUCE"][0])
    assert marker.exists()


# ------------------------------------------------------------------------- memory bombs, under 1 GiB

_BOMB_RUNNER = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from sedd_jax import torch_pickle
results = {}
for name, path in json.loads(sys.argv[1]).items():
    try:
        state = torch_pickle.load_state_dict(path)
        results[name] = "loaded " + ",".join(f"{k}:{v.shape}" for k, v in state.items())
    except torch_pickle.UnsafeCheckpointError as error:
        results[name] = "refused " + str(error)
# VmHWM: this process's own peak (ru_maxrss would carry over the parent's peak across fork and exec).
results["maxrss_kib"] = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
results["torch imported"] = "torch" in sys.modules
print(json.dumps(results))
"""


def _bombs(tmp_path) -> dict:
    """name -> (path, expected message fragment). Each asks for GBs from a file of at most a few MB."""
    files = {}

    def add(name, pickled, storages, expect, patch=None):
        path = write_archive(tmp_path / f"{name}.bin", pickled, storages)
        if patch:
            patch(path)
        files[name] = (path, expect)

    small = {"0": F32.tobytes()}
    # A zero-stride (2**19, 1024) float32 tensor over 1024 floats: 2 GiB from a ~1 KB file.
    add("zero_stride", state_dict({"w": tensor(storage("0", 1024), 0, (2**19, 1024), (0, 1))}),
        {"0": bytes(4096)}, "zero stride on a dimension of size > 1")
    # Strides that cancel in the old bounds check (a segfault there).
    add("cancelling", state_dict({"w": tensor(storage("0", 12), 0, (2, 2), (2**40, -2**40))}), small,
        "must be ints >= 0")
    # A real deflate stream of ~4 GB of zeros in a ~4 MB zip (blocks made independent by Z_FULL_FLUSH).
    chunk, repeats = 1 << 24, 238
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(chunk)) + compressor.flush(zlib.Z_FULL_FLUSH)
    final = zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # an empty last block
    stream = block * repeats + final
    add("zip_bomb", state_dict({"w": tensor(storage("0", chunk * repeats // 4), 0, (chunk * repeats // 4,), (1,))}),
        {"0": stream}, "deflated entry declares 3992977408 bytes",
        lambda p: patch_entry(p, "archive/data/0", method=zipfile.ZIP_DEFLATED, file_size=chunk * repeats))
    # Declares 4096 bytes (with the CRC of 4096 zeros) but its stream inflates to 16 MiB: read capped at 4096.
    add("inflate_cap", state_dict({"w": tensor(storage("0", 1024), 0, (1024,), (1,))}), {"0": block + final},
        "loaded w:(1024,)", lambda p: patch_entry(p, "archive/data/0", method=zipfile.ZIP_DEFLATED, file_size=4096,
                                                  crc=zlib.crc32(bytes(4096))))
    # A stored entry that claims 4 GiB the file does not have.
    add("stored_claim", state_dict({"w": tensor(storage("0", 2**30 - 4), 0, (4,), (1,))}), small,
        "more than the file holds",
        lambda p: patch_entry(p, "archive/data/0", file_size=2**32 - 16, compress_size=2**32 - 16))
    # data.pkl declared at 4 GiB.
    add("pickle_claim", state_dict({}), {}, "archive/data.pkl: entry declares 4294967280 bytes, over the bound",
        lambda p: patch_entry(p, "archive/data.pkl", file_size=2**32 - 16, compress_size=2**32 - 16))

    def central_directory(p):  # end record claiming a 4 GiB central directory
        blob = bytearray(open(p, "rb").read())
        struct.pack_into("<I", blob, len(blob) - 22 + 12, 2**32 - 16)
        open(p, "wb").write(bytes(blob))
    add("central_directory", state_dict({}), {}, "zip central directory declares 4294967280 bytes", central_directory)
    # Memo index 2**28 (a 2**28-slot memo table in the C unpickler) and lengths claiming GBs.
    add("memo_index", b"\x80\x02}r" + struct.pack("<I", 2**28) + b".", {}, "memo index 268435456 over the bound")
    add("binbytes8", b"\x80\x04\x8e" + struct.pack("<Q", 8 << 30) + b"x" * 64 + b".", {},
        "string of 8589934592 bytes, over the bound")
    add("binunicode", b"\x80\x02X" + struct.pack("<I", 2**32 - 1) + b"x.", {}, "over the bound of 65536")
    add("frame", b"\x80\x04\x95" + struct.pack("<Q", 2**62) + b"}.", {}, "FRAME claims 4611686018427387904 bytes")
    add("short_read", b"\x80\x02X" + struct.pack("<I", 60000) + b"x.", {}, "argument claims 60000 bytes but only 2")
    # 3M one-byte EMPTY_DICTs (each a 64-byte dict): stopped at the push bound.
    add("dict_flood", b"\x80\x02" + b"}" * 3_000_000 + b".", {}, "pushes more than 2097152 values")
    return files


def test_memory_bombs_are_refused_in_bounded_memory(tmp_path):
    bombs = _bombs(tmp_path)
    assert max(os.path.getsize(path) for path, _ in bombs.values()) < 8 << 20
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", _BOMB_RUNNER, json.dumps({k: p for k, (p, _) in bombs.items()})],
                          capture_output=True, text=True, timeout=120, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    for name, (path, expect) in bombs.items():
        assert expect in results[name], (name, results[name])
        if not expect.startswith("loaded"):
            assert results[name].startswith(f"refused {path}"), results[name]
    assert results["maxrss_kib"] < 512 * 1024, results["maxrss_kib"]
    assert not results["torch imported"]
