"""Untrusted checkpoint files other than the torch pickle (tests/test_torch_pickle_safety.py has those):
config.json against its schema, crafted safetensors headers, edited converted directories, `convert` never
deleting what it did not create, and the CLIs' one-line errors."""

import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from sedd_jax import converted, official, pretrained, sample
from tests.conftest import TINY_CHECKPOINT
from tests.pickle_testing import F32, glob, state_dict, storage, tensor, tup, u, write_archive
from tests.train_testing import REPO


def _config():
    return json.loads((TINY_CHECKPOINT / "config.json").read_text())


def _with(config, path, value):
    node = config
    *parents, leaf = path.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    return config


def _official_dir(tmp_path, name, config=None, safetensors=None):
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(config if isinstance(config, str) else json.dumps(config or _config()))
    if safetensors is None:
        shutil.copy(TINY_CHECKPOINT / "pytorch_model.bin", path / "pytorch_model.bin")
    else:
        (path / "model.safetensors").write_bytes(safetensors)
    return path


# ------------------------------------------------------------------------------------------ config.json

BAD_CONFIGS = [
    ("model.n_blocks", 10_000_000, "model.n_blocks must be an integer in [1, 1024], got 10000000"),
    ("model.hidden_size", 1e12, "model.hidden_size must be an integer in [2, 65536], got 1000000000000.0"),
    ("tokens", 50.7, "tokens must be an integer in [2, 4194304], got 50.7"),
    ("tokens", True, "tokens must be an integer"),
    ("model.n_heads", "4", "model.n_heads must be an integer in [1, 1024], got '4'"),
    ("model.scale_by_sigma", 1, "model.scale_by_sigma must be true or false, got 1"),
    ("model.dropout", 3.0, "model.dropout=3.0 is not valid (a number, out of range)"),
    ("noise.eps", -1, "noise.eps=-1 is not valid (a number, out of range)"),
    ("graph", ["absorb"], "graph must be a JSON object"),
    ("data", "gpt2", "data must be a JSON object"),
    ("model.n_heads", 5, "model.hidden_size=64 is not divisible by model.n_heads=5"),
]


@pytest.mark.parametrize("field, value, message", BAD_CONFIGS)
def test_config_fields_out_of_schema_are_refused_before_building(tmp_path, field, value, message):
    path = _official_dir(tmp_path, "c", _with(_config(), field, value))
    with pytest.raises(ValueError, match="config.json: " + _escape(message)):
        pretrained.load(path)


def _escape(text):
    import re
    return re.escape(text)


def test_configs_that_are_not_objects_or_too_big(tmp_path):
    with pytest.raises(ValueError, match="a checkpoint config is a JSON object .* got a JSON list"):
        pretrained.load(_official_dir(tmp_path, "list", "[1, 2]"))
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        pretrained.load(_official_dir(tmp_path, "broken", "{\"tokens\": "))
    with pytest.raises(ValueError, match=r"config.json is \d+ bytes; a checkpoint config is at most 1048576"):
        pretrained.load(_official_dir(tmp_path, "huge", json.dumps({"pad": "x" * 2_000_000})))
    config = _with(_with(_config(), "model.hidden_size", 65536), "model.n_blocks", 1024)
    with pytest.raises(ValueError, match=r"imply 5.\d+e\+13 parameters, more than the 2e\+10"):
        pretrained.load(_official_dir(tmp_path, "giant", _with(config, "model.n_heads", 1024)))


# ------------------------------------------------------------------------------------------ safetensors

def _safetensors(header: dict, data: bytes = b"", header_size: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if header_size is None else header_size) + raw + data


BAD_SAFETENSORS = [
    (_safetensors({}, header_size=1 << 62), "header length 4611686018427387904 exceeds the file"),
    (b"\x01\x00", "not a safetensors file (2 bytes"),
    (struct.pack("<Q", 3) + b"{x}", "the header is not valid JSON"),
    (_safetensors([1]), "the header is not a JSON object"),
    (_safetensors({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8),
     "the tensors cover 16 bytes of a 8-byte data section"),
    (_safetensors({"w": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 16]}}, b"\0" * 16),
     "shape [1099511627776] of F32 needs 4398046511104 bytes, its range holds 16"),
    (_safetensors({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                   "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, b"\0" * 16),
     "tensor 'b' starts at byte 8, expected 16"),
    (_safetensors({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, b"\0" * 16),
     "shape [-4] is not a list of at most 8 non-negative integers"),
    (_safetensors({"w": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}}, b"\0" * 16),
     "data_offsets [16, 0] is not [begin, end]"),
    (_safetensors({"w": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}, b"\0" * 16),
     "dtype 'I64' is not one of the floating-point types"),
    (_safetensors({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}}, b"\0" * 4),
     "an entry is an object with exactly dtype, shape and data_offsets"),
]


@pytest.mark.parametrize("content, message", BAD_SAFETENSORS)
def test_crafted_safetensors_are_refused(tmp_path, content, message):
    path = _official_dir(tmp_path, "s", safetensors=content)
    with pytest.raises(ValueError, match=_escape(message)):
        pretrained.load(path)


def test_legitimate_safetensors_round_trip(tmp_path):
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones((0, 2), np.float16),
               "c": np.full((), 2.5, np.float64), "d": np.linspace(0, 1, 5).astype(np.float32)}
    save_file(tensors, str(tmp_path / "t.safetensors"), metadata={"format": "np"})
    read = official.read_safetensors(str(tmp_path / "t.safetensors"))
    assert sorted(read) == sorted(tensors)
    for name, value in tensors.items():
        assert read[name].dtype == value.dtype and read[name].shape == value.shape
        np.testing.assert_array_equal(read[name], value)


# ------------------------------------------------------------------------------------ converted and convert

def test_edited_converted_config_fails_at_load_not_later(tmp_path):
    output = tmp_path / "conv"
    converted.save(str(output), *official.read_official(str(TINY_CHECKPOINT)))
    config = json.loads((output / "config.json").read_text())
    config["model"]["hidden_size"] = 32
    (output / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"params: the parameters do not match the model of its config .*"
                                         r"\['blocks_0'\]\['adaLN'\]\['bias'\] has shape \(384,\), the config implies \(192,\)"):
        pretrained.load(output)


def test_convert_never_deletes_what_it_did_not_create(tmp_path):
    output = tmp_path / "out"
    keep = tmp_path / "out.partial"
    keep.mkdir()
    (keep / "precious.txt").write_text("mine")
    done = subprocess.run([sys.executable, "-m", "sedd_jax.convert", f"--checkpoint={TINY_CHECKPOINT}",
                           f"--output={output}"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (keep / "precious.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["out", "out.partial"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is not an empty directory"):
        converted.save(str(tmp_path / "file"), *official.read_official(str(TINY_CHECKPOINT)))
    assert (tmp_path / "file").read_text() == "x"


# ------------------------------------------------------------------------------------------- the CLIs

def hostile_directories(tmp_path) -> list:
    """Checkpoint directories with one hostile or broken file each (config, safetensors, torch .bin)."""
    dirs = [_official_dir(tmp_path, f"config{i}", _with(_config(), field, value))
            for i, (field, value, _) in enumerate(BAD_CONFIGS[:4])]
    dirs += [_official_dir(tmp_path, f"safetensors{i}", safetensors=content)
             for i, (content, _) in enumerate(BAD_SAFETENSORS[:4])]
    for name, content in (("zip", b"PK\x03\x04broken"), ("pickle", b"\x80\x02legacy")):
        path = _official_dir(tmp_path, f"bin_{name}")
        (path / "pytorch_model.bin").write_bytes(content)
        dirs.append(path)
    bins = {"code": state_dict({"w": glob("os", "system") + tup(u(f"touch {tmp_path}/pwned")) + b"R"}),
            "strides": state_dict({"w": tensor(storage("0", 12), 0, (2, 2), (2**40, -2**40))}),
            "memo": b"\x80\x02}r\x00\x00\x00\x10."}
    for name, pickled in bins.items():
        path = _official_dir(tmp_path, f"bin_{name}")
        write_archive(path / "pytorch_model.bin", pickled, {"0": F32.tobytes()})
        dirs.append(path)
    return dirs


def test_sample_and_convert_report_one_error_line(tmp_path, capsys):
    dirs = hostile_directories(tmp_path)
    for path in dirs:
        assert sample.main([f"--checkpoint={path}", "--steps=2", "--ids_only"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, (path, err)
    procs = [subprocess.Popen([sys.executable, "-m", "sedd_jax.convert", f"--checkpoint={path}",
                               f"--output={tmp_path / 'out' / path.name}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=REPO) for path in dirs]
    for path, proc in zip(dirs, procs):
        out, err = proc.communicate(timeout=300)
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in err, (path, err)
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
    assert not (tmp_path / "pwned").exists()


BOUNDED = """
import json, os, sys
from sedd_jax import official
def peak():  # VmHWM: this process's own peak RSS (ru_maxrss would carry over the parent's peak)
    return int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))) * 1024
tmp = sys.argv[1]
start = peak()
refused = 0
for name in sorted(os.listdir(tmp)):
    path = os.path.join(tmp, name)
    try:
        (official.read_config if os.path.isdir(path) else official.read_safetensors)(path)
    except ValueError:
        refused += 1
print("refused", refused, "growth", peak() - start)
"""


def test_config_and_safetensors_bombs_are_refused_in_bounded_memory(tmp_path):
    bombs = tmp_path / "bombs"
    bombs.mkdir()
    claims = {"header": _safetensors({}, header_size=1 << 62),
              "tensor": _safetensors({"w": {"dtype": "F32", "shape": [1 << 34], "data_offsets": [0, 1 << 36]}}),
              "many": _safetensors({f"w{i}": {"dtype": "F32", "shape": [1 << 20], "data_offsets": [0, 1 << 22]}
                                    for i in range(1000)})}
    for name, content in claims.items():
        (bombs / f"{name}.safetensors").write_bytes(content)
    for name, field, value in (("blocks", "model.n_blocks", 10_000_000), ("hidden", "model.hidden_size", 1 << 30),
                               ("vocab", "tokens", 1 << 40)):
        (bombs / name).mkdir()
        (bombs / name / "config.json").write_text(json.dumps(_with(_config(), field, value)))
    done = subprocess.run([sys.executable, "-c", BOUNDED, str(bombs)], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    refused, growth = done.stdout.split()[1], int(done.stdout.split()[3])
    assert refused == "6", done.stdout + done.stderr
    assert growth < 64 << 20, growth   # nothing the files claim was allocated
