"""The official SEDD checkpoint format: config.json + pytorch_model.bin or model.safetensors (reference §8).

The published louaaron/sedd-small and sedd-medium are laid out this way. Everything here treats the files
as untrusted input, checked before anything is built from them:
  * `config_from_dict` checks config.json against a schema (types and sane ranges of every field the model,
    graph and noise use, and the parameter count they imply) before any array exists;
  * `pytorch_model.bin` is read by `sedd_jax.torch_pickle` (no torch, no pickled code, bounded memory);
  * `model.safetensors` is read by `read_safetensors`, which checks the header (size, dtypes, shapes,
    offsets that tile the data exactly) before reading a byte of tensor data;
  * `state_dict_to_params` maps the torch names and layout onto sedd-jax's parameter tree and checks every
    key and shape against the model config.json builds.
Every failure is a ValueError (FileNotFoundError for missing files) whose message names the file and the rule.
"""

from __future__ import annotations

import functools
import json
import math
import os
import struct

import ml_collections
import numpy as np

from sedd_jax import graphs, models, noise as noise_lib

CONFIG_FILE = "config.json"
TORCH_WEIGHTS = "pytorch_model.bin"
SAFETENSORS_WEIGHTS = "model.safetensors"
MAX_CONFIG_BYTES = 1 << 20
MAX_PARAMETERS = 20_000_000_000   # far above any SEDD model; a config implying more is a mistake or an attack
MAX_SAFETENSORS_HEADER = 100 << 20

# config.json fields: (type, low, high) checked before anything is built. ints exclude bools.
_INT_FIELDS = {
    "tokens": (2, 1 << 22),
    "model.hidden_size": (2, 1 << 16), "model.n_heads": (1, 1 << 10), "model.n_blocks": (1, 1 << 10),
    "model.cond_dim": (1, 1 << 16), "model.length": (2, 1 << 20),
}
_OPTIONAL_FIELDS = {  # field: (type, default, check)
    "model.dropout": (float, 0.1, lambda v: 0 <= v < 1),
    "model.length": (int, 1024, None),
    "noise.eps": (float, noise_lib.LOGLINEAR_DEFAULT_EPS, lambda v: 0 < v < 1),
    "noise.sigma_min": (float, 1e-4, lambda v: 0 < v),
    "noise.sigma_max": (float, 20.0, lambda v: 0 < v < 1e6),
    "model.attention": (str, None, None), "model.scan_blocks": (bool, None, None),
    "model.remat": (str, None, None), "model.name": (str, None, None),
    "model.time_conditioning": (bool, True, None),
    "data.tokenizer": (str, None, None), "data.cache_dir": (str, None, None),
    "data.sp_vocab_size": (int, None, lambda v: 2 <= v <= 1 << 22),
}


# --------------------------------------------------------------------------------------------- config

def _get(raw: dict, path: str):
    node = raw
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _is(value, kind) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, kind)


def _kind_name(kind) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[kind]


def implied_parameters(tokens: int, hidden: int, n_blocks: int, cond: int) -> int:
    """Parameters of the SEDD network of these sizes (embedding, blocks, output, conditioning), for bounds."""
    vocab = tokens + 1
    per_block = 12 * hidden * hidden + 6 * hidden * (cond + 1) + 6 * hidden
    return 2 * vocab * hidden + n_blocks * per_block + cond * (256 + cond + 2) + 3 * hidden * (cond + 1)


def config_from_dict(raw, source: str = CONFIG_FILE) -> ml_collections.ConfigDict:
    """Checks a checkpoint config (the parsed config.json) against the schema and fills defaults.

    Needs tokens, graph.type, noise.type and model.{hidden_size, n_heads, n_blocks, cond_dim,
    scale_by_sigma} with the right types and sane ranges; optional fields are type-checked too. Raises
    ValueError naming `source`, the field and the rule; builds nothing."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: a checkpoint config is a JSON object with tokens, graph, noise and model; "
                         f"got a JSON {type(raw).__name__}")
    missing = [k for k in ("tokens", "graph", "noise", "model") if k not in raw]
    if missing:
        raise ValueError(f"{source}: the config lacks {missing}; an official config.json has tokens, graph.type, "
                         "noise.type and model.*")
    for block in ("graph", "noise", "model") + (("data",) if "data" in raw else ()):
        if not isinstance(raw[block], dict):
            raise ValueError(f"{source}: {block} must be a JSON object ({block}.type, ...), got "
                             f"{type(raw[block]).__name__}")
    for field in ("graph.type", "noise.type", "model.scale_by_sigma", "model.hidden_size", "model.n_heads",
                  "model.n_blocks", "model.cond_dim"):
        if _get(raw, field) is None:
            raise ValueError(f"{source}: the config lacks {field}")
    for field, (low, high) in _INT_FIELDS.items():
        value = _get(raw, field)
        if value is None and field == "model.length":
            continue
        if not _is(value, int) or not low <= value <= high:
            raise ValueError(f"{source}: {field} must be an integer in [{low}, {high}], got {value!r}")
    for field, kind in (("graph.type", str), ("noise.type", str), ("model.scale_by_sigma", bool)):
        if not _is(_get(raw, field), kind):
            raise ValueError(f"{source}: {field} must be {_kind_name(kind)}, got {_get(raw, field)!r}")
    for field, (kind, _, check) in _OPTIONAL_FIELDS.items():
        value = _get(raw, field)
        if value is not None and (not _is(value, kind) or (check is not None and not check(value))):
            raise ValueError(f"{source}: {field}={value!r} is not valid ({_kind_name(kind)}"
                             f"{', out of range' if _is(value, kind) else ''})")
    model = raw["model"]
    count = implied_parameters(raw["tokens"], model["hidden_size"], model["n_blocks"], model["cond_dim"])
    if count > MAX_PARAMETERS:
        raise ValueError(f"{source}: tokens={raw['tokens']}, model.hidden_size={model['hidden_size']}, "
                         f"model.n_blocks={model['n_blocks']}, model.cond_dim={model['cond_dim']} imply {count:.3g} "
                         f"parameters, more than the {MAX_PARAMETERS:.0e} any SEDD checkpoint has")
    raw = json.loads(json.dumps(raw))
    for field, (_, default, _) in _OPTIONAL_FIELDS.items():
        block, name = field.split(".")
        if default is not None and block in raw and isinstance(raw[block], dict):
            if block == "noise" and name == "eps" and raw["noise"]["type"] != "loglinear":
                continue
            if block == "noise" and name.startswith("sigma") and raw["noise"]["type"] != "geometric":
                continue
            raw[block].setdefault(name, default)
    config = ml_collections.ConfigDict(raw)
    try:
        graphs.get_graph(config.graph.type, config.tokens)
        noise_lib.from_config(config)
        models.validate_model_config(config)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    return config


def read_config(path: str, raw=None) -> ml_collections.ConfigDict:
    """config.json of a checkpoint directory, read with a size bound and checked (`config_from_dict`). `raw`:
    that file already parsed (`read_json`), when the caller has read it; it is checked all the same."""
    config_path = os.path.join(path, CONFIG_FILE)
    return config_from_dict(read_json(config_path) if raw is None else raw, config_path)


def read_json(path: str, max_bytes: int = MAX_CONFIG_BYTES):
    """A JSON file of at most `max_bytes`; ValueError naming the file when it is larger or not JSON."""
    size = os.path.getsize(path)
    if size > max_bytes:
        raise ValueError(f"{path} is {size} bytes; a checkpoint config is at most {max_bytes}")
    with open(path, "rb") as f:
        try:
            return json.loads(f.read(max_bytes).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from None


# --------------------------------------------------------------------------------------------- weights

_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": "bfloat16"}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """`model.safetensors` -> {name: array}. The header is checked before any tensor data is read: its length
    is bounded by the file, entries are floating-point tensors whose non-negative shapes match their byte
    ranges, and the ranges tile the data section exactly (no overlap, no gap, nothing past the end)."""
    import ml_dtypes

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size < 8:
            raise ValueError(f"{path}: not a safetensors file ({size} bytes, shorter than its 8-byte header length)")
        (header_size,) = struct.unpack("<Q", f.read(8))
        if header_size > min(MAX_SAFETENSORS_HEADER, size - 8):
            raise ValueError(f"{path}: header length {header_size} exceeds the file ({size} bytes) or the "
                             f"{MAX_SAFETENSORS_HEADER}-byte bound")
        try:
            header = json.loads(f.read(header_size).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: the header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise ValueError(f"{path}: the header is not a JSON object")
        header.pop("__metadata__", None)
        data_size = size - 8 - header_size
        entries = []
        for name, info in header.items():
            rule = _safetensors_entry_error(info)
            if rule:
                raise ValueError(f"{path}: tensor {name!r}: {rule}")
            dtype = np.dtype(ml_dtypes.bfloat16 if info["dtype"] == "BF16" else _SAFETENSORS_DTYPES[info["dtype"]])
            begin, end = info["data_offsets"]
            if end - begin != math.prod(info["shape"]) * dtype.itemsize:
                raise ValueError(f"{path}: tensor {name!r}: shape {info['shape']} of {info['dtype']} needs "
                                 f"{math.prod(info['shape']) * dtype.itemsize} bytes, its range holds {end - begin}")
            entries.append((begin, end, name, dtype, tuple(info["shape"])))
        entries.sort()
        position = 0
        for begin, end, name, _, _ in entries:
            if begin != position:
                raise ValueError(f"{path}: tensor {name!r} starts at byte {begin}, expected {position} (tensor "
                                 "ranges must tile the data section without overlaps or gaps)")
            position = end
        if position != data_size:
            raise ValueError(f"{path}: the tensors cover {position} bytes of a {data_size}-byte data section")
        tensors = {}
        for begin, end, name, dtype, shape in entries:
            f.seek(8 + header_size + begin)
            tensors[name] = np.frombuffer(f.read(end - begin), dtype=dtype.newbyteorder("<")).reshape(shape)
    return tensors


def _safetensors_entry_error(info) -> str | None:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        return "an entry is an object with exactly dtype, shape and data_offsets"
    if info["dtype"] not in _SAFETENSORS_DTYPES:
        return f"dtype {info['dtype']!r} is not one of the floating-point types {sorted(_SAFETENSORS_DTYPES)}"
    shape, offsets = info["shape"], info["data_offsets"]
    if not isinstance(shape, list) or len(shape) > 8 or not all(_is(n, int) and n >= 0 for n in shape):
        return f"shape {shape!r} is not a list of at most 8 non-negative integers"
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is(o, int) and o >= 0 for o in offsets)
            or offsets[0] > offsets[1]):
        return f"data_offsets {offsets!r} is not [begin, end] with 0 <= begin <= end"
    return None


def _torch_key_map(n_blocks: int) -> dict[str, tuple[tuple[str, ...], bool]]:
    """torch state-dict key -> (sedd-jax parameter path, transpose?) (reference §1.9)."""
    mapping = {
        "vocab_embed.embedding": (("embedding",), False),
        "sigma_map.mlp.0.weight": (("sigma_mlp_in", "kernel"), True),
        "sigma_map.mlp.0.bias": (("sigma_mlp_in", "bias"), False),
        "sigma_map.mlp.2.weight": (("sigma_mlp_out", "kernel"), True),
        "sigma_map.mlp.2.bias": (("sigma_mlp_out", "bias"), False),
        "output_layer.norm_final.weight": (("norm_final", "scale"), False),
        "output_layer.linear.weight": (("output", "kernel"), True),
        "output_layer.linear.bias": (("output", "bias"), False),
        "output_layer.adaLN_modulation.weight": (("final_adaLN", "kernel"), True),
        "output_layer.adaLN_modulation.bias": (("final_adaLN", "bias"), False),
    }
    block = {
        "norm1.weight": (("norm1", "scale"), False), "norm2.weight": (("norm2", "scale"), False),
        "attn_qkv.weight": (("attn_qkv", "kernel"), True), "attn_out.weight": (("attn_out", "kernel"), True),
        "mlp.0.weight": (("mlp_in", "kernel"), True), "mlp.0.bias": (("mlp_in", "bias"), False),
        "mlp.2.weight": (("mlp_out", "kernel"), True), "mlp.2.bias": (("mlp_out", "bias"), False),
        "adaLN_modulation.weight": (("adaLN", "kernel"), True),
        "adaLN_modulation.bias": (("adaLN", "bias"), False),
    }
    for i in range(n_blocks):
        for key, (path, transpose) in block.items():
            mapping[f"blocks.{i}.{key}"] = ((f"blocks_{i}",) + path, transpose)
    return mapping


def state_dict_to_params(state_dict: dict[str, np.ndarray], config) -> dict:
    """Maps an official SEDD state dict (torch layout, `[out, in]` Linear weights) onto sedd-jax parameters
    for `config`, checking every key and shape. Returns a nested dict of float32 numpy arrays."""
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    head_dim = config.model.hidden_size // config.model.n_heads
    inv_freq = state_dict.pop("rotary_emb.inv_freq", None)
    if inv_freq is not None:
        expected = 10000.0 ** (-np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)
        if inv_freq.shape != expected.shape or not np.allclose(inv_freq, expected, rtol=1e-5):
            raise ValueError(f"rotary_emb.inv_freq of shape {inv_freq.shape} does not match head dim {head_dim} "
                             "(model.hidden_size / model.n_heads) of the config")
    mapping = _torch_key_map(config.model.n_blocks)
    missing = sorted(set(mapping) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(mapping))
    if missing or unexpected:
        raise ValueError(
            f"state dict does not match config (model.n_blocks={config.model.n_blocks}): missing keys "
            f"{missing[:6]}{'...' if len(missing) > 6 else ''}, unexpected keys "
            f"{unexpected[:6]}{'...' if len(unexpected) > 6 else ''}. Check that config.json belongs to these weights")
    shapes = models.abstract_params(models.get_model(config))
    params: dict = {}
    mismatches = []
    for key, (path, transpose) in mapping.items():
        want = functools.reduce(lambda tree, name: tree[name], path, shapes).shape
        found = tuple(state_dict[key].shape)
        if (found[::-1] if transpose else found) != want:
            mismatches.append(f"{key}: {found} in the file, config implies {want[::-1] if transpose else want}")
            continue
        value = np.asarray(state_dict[key], dtype=np.float32)
        node = params
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = np.ascontiguousarray(value.T if transpose else value)
    if mismatches:
        raise ValueError("state dict shapes do not match config (tokens, graph.type, model.*): "
                         + "; ".join(mismatches[:6]))
    return params


def read_official(path: str, raw=None) -> tuple[ml_collections.ConfigDict, dict]:
    """(config, params) from `config.json` + `model.safetensors` or `pytorch_model.bin`. `raw`: config.json
    already parsed, when the caller has read it."""
    config = read_config(path, raw)
    safetensors_path = os.path.join(path, SAFETENSORS_WEIGHTS)
    torch_path = os.path.join(path, TORCH_WEIGHTS)
    if os.path.exists(safetensors_path):
        state_dict = read_safetensors(safetensors_path)
    elif os.path.exists(torch_path):
        from sedd_jax import torch_pickle
        state_dict = torch_pickle.load_state_dict(torch_path)
    else:
        raise FileNotFoundError(
            f"{path} has {CONFIG_FILE} but no weights: expected {TORCH_WEIGHTS} or {SAFETENSORS_WEIGHTS} beside it "
            "(download both files of the checkpoint, e.g. `huggingface-cli download louaaron/sedd-small "
            f"--local-dir {path}`)")
    try:
        return config, state_dict_to_params(state_dict, config)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
