"""The sampling CLI on the tiny official-format fixture checkpoint (offline: --ids_only)."""

import json
import pathlib

import numpy as np
import pytest

from sedd_jax import pretrained, sample

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "sedd_tiny_absorb_hf"
TOKENS, LENGTH = 50, 32


def test_samples_ids_with_prompt_and_progress(tmp_path, capsys):
    output = tmp_path / "samples.jsonl"
    rc = sample.main([f"--checkpoint={FIXTURE}", "--batch_size=3", "--steps=8", "--predictor=analytic",
                      "--ids_only", "--prefix_ids=1,2,3", "--suffix_ids=4,5", "--seed=7", "--progress_every=4",
                      f"--output={output}"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    ids = np.array([r["ids"] for r in rows])
    assert ids.shape == (3, LENGTH) and ids.min() >= 0 and ids.max() < TOKENS  # no MASK (id 50) left
    assert (ids[:, :3] == [1, 2, 3]).all() and (ids[:, -2:] == [4, 5]).all()
    printed = [line for line in out.splitlines() if line and not line.startswith("=")]
    assert [list(map(int, line.split())) for line in printed] == ids.tolist()
    assert "sampling step 4/8" in err and "sampling step 8/8" in err
    assert rows[0]["seed"] == 7 and rows[0]["predictor"] == "analytic" and rows[0]["method"] == "unbiased"


def _error(capsys, *argv):
    rc = sample.main(list(argv))
    out, err = capsys.readouterr()
    assert rc == 1
    assert "Traceback" not in err
    return err


def test_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    err = _error(capsys, f"--checkpoint={tmp_path}", "--steps=4", "--ids_only")
    assert "is not a SEDD checkpoint" in err and "notes.txt" in err
    err = _error(capsys, f"--checkpoint={tmp_path / 'missing'}", "--steps=4", "--ids_only")
    assert "does not exist" in err


@pytest.mark.parametrize("argv, message", [
    (["--steps=0"], "steps must be an integer >= 1"),
    (["--predictor=tweedie"], "unknown predictor 'tweedie'"),
    (["--method=fp64"], "unknown categorical sampling method"),
    (["--prefix_ids=" + ",".join(["1"] * 30), "--suffix_ids=1,2,3"], "do not fit in a sequence of length 32"),
    (["--prefix_ids=1,x"], "--prefix_ids must be comma-separated integers"),
    (["--prefix=hello"], "needs the tokenizer"),
    (["--prefix_ids=50"], "outside the vocabulary [0, 50)"),
])
def test_bad_input(capsys, argv, message):
    err = _error(capsys, f"--checkpoint={FIXTURE}", "--ids_only", *(["--steps=4"] if "--steps=0" not in argv else []),
                 *argv)
    assert message in err


def test_tokenizer_failure_is_reported_before_sampling(capsys, monkeypatch):
    def offline(self):
        raise RuntimeError("could not load the GPT-2 BPE files (no network?). Pre-download them once")

    monkeypatch.setattr(pretrained.Pretrained, "tokenizer", property(offline))
    err = _error(capsys, f"--checkpoint={FIXTURE}", "--steps=4")
    assert "Pre-download" in err and "sampling 1 x" not in err
