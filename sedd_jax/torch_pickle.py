"""Reads a `torch.save`d state dict (`pytorch_model.bin`) into numpy without torch, and safely.

A modern torch checkpoint is a zip archive holding `<root>/data.pkl` (a pickle of an OrderedDict of
tensors, each rebuilt by `torch._utils._rebuild_tensor_v2` from a storage named by a persistent id) and one
raw little-endian file per storage at `<root>/data/<key>`. The unpickler below resolves ONLY the handful of
globals such a state dict needs, mapped to numpy stand-ins; any other global (the way a malicious pickle
runs code) raises `UnsafeCheckpointError` before anything executes.
"""

from __future__ import annotations

import collections
import pickle
import zipfile

import ml_dtypes
import numpy as np

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The pickle asks for something a plain tensor state dict never contains."""


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    del requires_grad, backward_hooks, metadata
    itemsize = storage.dtype.itemsize
    if not size:
        return np.array(storage[storage_offset])
    needed = storage_offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
    if min(size) > 0 and needed > storage.size:
        raise pickle.UnpicklingError(f"tensor of size {tuple(size)} overruns its storage ({storage.size} items)")
    return np.lib.stride_tricks.as_strided(
        storage[storage_offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)).copy()


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    del requires_grad, backward_hooks
    return data


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, root: str):
        super().__init__(file)
        self._archive = archive
        self._root = root
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeCheckpointError(
            f"refusing to load {module}.{name}: a state-dict checkpoint only holds tensors; this file may run "
            "code when unpickled and is not read")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise UnsafeCheckpointError(f"unexpected persistent id in checkpoint: {pid!r}")
        _, storage_type, key, _location, numel = pid
        if key not in self._storages:
            raw = self._archive.read(f"{self._root}/data/{key}")
            array = np.frombuffer(raw, dtype=storage_type.dtype.newbyteorder("<"))
            if array.size < numel:
                raise pickle.UnpicklingError(f"storage {key} holds {array.size} items, expected {numel}")
            self._storages[key] = array.astype(storage_type.dtype, copy=False)
        return self._storages[key]


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """`pytorch_model.bin` -> {key: numpy array} without importing torch or executing pickled code."""
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a zip-format torch checkpoint (torch >= 1.6 `torch.save`). Re-save it with "
            "torch.save(state_dict, path) in a recent torch, or convert it to model.safetensors")
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise ValueError(f"{path}: expected one data.pkl in the archive, found {pickles}")
        root = pickles[0][: -len("/data.pkl")] if "/" in pickles[0] else ""
        byteorder = f"{root}/byteorder" if root else "byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise ValueError(f"{path}: big-endian torch checkpoints are not supported")
        with archive.open(pickles[0]) as f:
            state = _StateDictUnpickler(f, archive, root).load()
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors (got {type(state).__name__}); "
                         "training checkpoints (checkpoint.pth) must be reduced to the model's state_dict")
    return dict(state)
