"""Checkpoint loading: official .bin and .safetensors, converted orbax, the uniform graph, bad input."""

import io
import json
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from safetensors.numpy import save_file

from sedd_jax import converted, graphs, noise, official, pretrained, torch_pickle
from tests.conftest import TINY_CHECKPOINT


def _official_config():
    with open(TINY_CHECKPOINT / "config.json") as f:
        return json.load(f)


def _state_dict(parity):
    return {k[len("params/"):]: v for k, v in parity.items() if k.startswith("params/")}


def _write_checkpoint(path, config, state_dict=None, fmt="safetensors"):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    if state_dict is not None:
        save_file(state_dict, os.path.join(path, "model.safetensors"))
    return str(path)


def test_torch_bin_reads_without_torch(parity):
    state = torch_pickle.load_state_dict(str(TINY_CHECKPOINT / "pytorch_model.bin"))
    expected = _state_dict(parity)
    assert list(state) == list(expected)  # state_dict order kept
    for key, value in expected.items():
        np.testing.assert_array_equal(state[key], value)
    assert "torch" not in sys.modules


def test_official_bin_and_safetensors_agree_with_reference(parity, tmp_path):
    path = _write_checkpoint(tmp_path / "st", _official_config(), _state_dict(parity))
    for model in (pretrained.load(TINY_CHECKPOINT), pretrained.load(path)):
        assert isinstance(model.graph, graphs.Absorbing) and model.graph.dim == 51
        assert model.noise == noise.LogLinear(1e-3)
        np.testing.assert_allclose(model.log_score(parity["x"], parity["sigma"]), parity["log_score"], atol=2e-5)
        np.testing.assert_allclose(model.score(parity["x"], parity["sigma"]), np.exp(parity["log_score"]),
                                   rtol=1e-4)


def test_uniform_checkpoint_loads_with_its_own_noise(parity, tmp_path):
    config = _official_config()
    config["tokens"] = 51  # same parameter shapes as the absorb fixture (vocabulary 51)
    config["graph"]["type"] = "uniform"
    config["noise"]["type"] = "geometric"
    config["model"]["scale_by_sigma"] = False
    model = pretrained.load(_write_checkpoint(tmp_path / "uniform", config, _state_dict(parity)))
    assert isinstance(model.graph, graphs.Uniform) and model.graph.dim == 51
    assert model.noise == noise.Geometric(1e-4, 20.0)  # read from the file, not inferred from the graph
    # Without scale_by_sigma the output is the raw logits: absorb's output + log(e^sigma - 1) + log(50).
    shift = np.log(np.expm1(parity["sigma"]))[:, None, None] + np.log(50)
    expected = np.where(np.eye(51, dtype=bool)[parity["x"]], 0, parity["log_score"] + shift)
    np.testing.assert_allclose(model.log_score(parity["x"], parity["sigma"]), expected, atol=5e-5)


def test_convert_cli_roundtrip_and_no_overwrite(parity, tmp_path):
    output = tmp_path / "converted"
    cmd = [sys.executable, "-m", "sedd_jax.convert", f"--checkpoint={TINY_CHECKPOINT}", f"--output={output}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "parameters=144,691" in done.stdout
    model = pretrained.load(output)
    np.testing.assert_allclose(model.log_score(parity["x"], parity["sigma"]), parity["log_score"], atol=2e-5)
    before = sorted(os.listdir(output))
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "is not an empty directory" in again.stderr
    assert sorted(os.listdir(output)) == before


def test_failed_conversion_leaves_nothing(tmp_path):
    source = _write_checkpoint(tmp_path / "src", _official_config())  # no weights
    with pytest.raises(FileNotFoundError):
        converted.save(str(tmp_path / "out"), *official.read_official(source))
    assert not (tmp_path / "out").exists() and os.listdir(tmp_path) == ["src"]


def _workdir(path, config, params):
    """A minimal training workdir as pretrained.load reads it: config.json and an orbax EMA checkpoint."""
    import orbax.checkpoint as ocp

    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    with ocp.CheckpointManager(os.path.join(path, "checkpoints"), item_names=("ema",)) as manager:
        manager.save(3, args=ocp.args.Composite(ema=ocp.args.StandardSave(params)))
    return str(path)


def test_each_format_reads_its_config_json_once(parity, tmp_path, monkeypatch):
    config, params = official.read_official(str(TINY_CHECKPOINT))
    converted.save(str(tmp_path / "converted"), config, params)
    paths = {"official": str(TINY_CHECKPOINT), "converted": str(tmp_path / "converted"),
             "workdir": _workdir(tmp_path / "workdir", _official_config(), params)}
    reads, read_json = [], official.read_json
    monkeypatch.setattr(official, "read_json", lambda path, *a, **k: reads.append(str(path)) or read_json(path, *a, **k))
    for kind, path in paths.items():
        reads.clear()
        model = pretrained.load(path)
        assert reads == [os.path.join(path, "config.json")], kind
        assert model.is_workdir == (kind == "workdir") and model.config.model.hidden_size == 64
        assert converted.MARKER not in model.config
        np.testing.assert_allclose(model.log_score(parity["x"], parity["sigma"]), parity["log_score"], atol=2e-5)


# ------------------------------------------------------------------------------------------ bad input

def test_directory_without_weights(tmp_path):
    path = _write_checkpoint(tmp_path / "noweights", _official_config())
    with pytest.raises(FileNotFoundError, match="no weights: expected pytorch_model.bin or model.safetensors"):
        pretrained.load(path)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FileNotFoundError, match="not a SEDD checkpoint.*found: notes.txt"):
        pretrained.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="huggingface-cli download louaaron/sedd-small"):
        pretrained.load("louaaron/sedd-small")


@pytest.mark.parametrize("field, value, message", [
    (("graph", "type"), "masked", "unknown graph type 'masked'"),
    (("noise", "type"), "cosine", "unknown noise type 'cosine'"),
    (("model", "scale_by_sigma"), True, None),  # fine for absorb
])
def test_unknown_graph_or_noise(parity, tmp_path, field, value, message):
    config = _official_config()
    config[field[0]][field[1]] = value
    path = _write_checkpoint(tmp_path / "c", config, _state_dict(parity))
    if message is None:
        pretrained.load(path)
    else:
        with pytest.raises(ValueError, match=message):
            pretrained.load(path)


def test_uniform_with_scale_by_sigma_checkpoint(parity, tmp_path):
    config = _official_config()
    config["graph"]["type"], config["tokens"] = "uniform", 51
    with pytest.raises(ValueError, match="scale_by_sigma=False"):
        pretrained.load(_write_checkpoint(tmp_path / "u", config, _state_dict(parity)))


def test_state_dict_keys_or_shapes_do_not_match_config(parity, tmp_path):
    config = _official_config()
    config["model"]["n_blocks"] = 3
    with pytest.raises(ValueError, match=r"missing keys \['blocks.2"):
        pretrained.load(_write_checkpoint(tmp_path / "blocks", config, _state_dict(parity)))
    config = _official_config()
    config["tokens"] = 60
    with pytest.raises(ValueError, match=r"vocab_embed.embedding: \(51, 64\) in the file, config implies \(61, 64\)"):
        pretrained.load(_write_checkpoint(tmp_path / "tokens", config, _state_dict(parity)))
    state = _state_dict(parity)
    state["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"unexpected keys \['extra.weight'\]"):
        pretrained.load(_write_checkpoint(tmp_path / "extra", _official_config(), state))


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_malicious_pickle_is_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _write_checkpoint(tmp_path / "evil", _official_config())
    buffer = io.BytesIO()
    pickle.dump({"vocab_embed.embedding": _Exploit()}, buffer, protocol=2)
    with zipfile.ZipFile(os.path.join(path, "pytorch_model.bin"), "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
    with pytest.raises(torch_pickle.UnsafeCheckpointError, match="refusing to load posix.system"):
        pretrained.load(path)
    assert not (tmp_path / "pwned").exists()


def test_legacy_non_zip_bin(tmp_path):
    path = _write_checkpoint(tmp_path / "old", _official_config())
    (tmp_path / "old" / "pytorch_model.bin").write_bytes(b"\x80\x02legacy")
    with pytest.raises(ValueError, match="not a zip-format torch checkpoint"):
        pretrained.load(path)


# ------------------------------------------------------------------------------------ sampling API

def test_jit_of_sampler_with_model_score_fn_and_frames(tmp_path):
    """`jax.jit(sampler)(model.score_fn, key)` (a pytree over the params) samples what `model.sample` does, and
    `sample_frames` is that draw seen from all-MASK (decoded as MASK_TEXT) to the final sample."""
    import jax

    from sedd_jax import sampling
    from tests.evaluate_testing import char_checkpoint

    model = pretrained.load(char_checkpoint(tmp_path))
    steps, length = 3, model.config.model.length
    sampler = sampling.get_pc_sampler(model.graph, model.noise, (2, length), "analytic", steps)
    jitted = np.asarray(jax.jit(sampler)(model.score_fn, jax.random.key(0)))
    frames, frame_texts = model.sample_frames(jax.random.key(0), steps=steps, num_frames=3, batch_size=2)
    assert frames.shape == (3, 2, length) and frames.dtype == np.int32
    np.testing.assert_array_equal(frames[-1], jitted)
    assert frame_texts[0] == [pretrained.MASK_TEXT * length] * 2
    assert frame_texts[-1] == [model.tokenizer.decode(row.tolist()) for row in jitted]
    assert pretrained.MASK_TEXT not in "".join(frame_texts[-1])
    assert model.decode_masked([1, 50, 50, 2, 27, 50], "_") == "a__b\n_"  # MASK = 50 (the fixture's tokens)
