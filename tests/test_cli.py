"""Every command line: `--help` as console script and as `python -m` (description, flags, defaults), the
`--model_path` alias, one `error:` line (the traceback only under `--verbose`), one usage and one error line for a
bad flag; sedd-sample's `--steps` default and `--length` warning; sedd-convert on what needs no conversion."""

import json
import pathlib
import re
import subprocess
import sys

import ml_collections
import pytest

from sedd_jax import evaluate, evaluate_samples, sample
from tests.conftest import TINY_CHECKPOINT

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = {"sedd-train": "sedd_jax.main", "sedd-sample": "sedd_jax.sample", "sedd-convert": "sedd_jax.convert",
           "sedd-compile": "sedd_jax.compile", "sedd-evaluate": "sedd_jax.evaluate",
           "sedd-evaluate-samples": "sedd_jax.evaluate_samples", "sedd-prepare": "sedd_jax.data.prepare"}
CONFIG_NAMES = ["tiny", "owt_small", "owt_medium", "text8"]
HELP_SHOWS = {  # besides the command's name: its description, main flags and some defaults
    "sedd-train": ["Train a SEDD model", "--config", "--workdir", "--heartbeat_timeout", "(default: '100')",
                   *CONFIG_NAMES],
    "sedd-sample": ["Sample from a SEDD checkpoint", "--checkpoint", "--model_path", "--verbose", "--steps",
                    "sampling.steps", "else 1024", "--batch_size", "number of samples (default: 1)",
                    "(default: analytic)", "(default: unbiased)"],
    "sedd-convert": ["Convert an official SEDD checkpoint", "--checkpoint", "--model_path", "--output",
                     "--[no]verbose", "(default: 'false')"],
    "sedd-compile": ["Will a config fit on a TPU slice", "--config", "--topology", "(default: 'text')", *CONFIG_NAMES],
    "sedd-evaluate": ["Likelihood-bound perplexity", "--checkpoint", "--model_path", "--dataset", "--verbose",
                      "--mc_samples", "(default: 1000)", "(default: sedd)"],
    "sedd-evaluate-samples": ["Generative perplexity", "--judge", "--samples", "--checkpoint", "--model_path",
                              "--verbose", "--steps", "(default: 1024", "(default: 8)"],
    "sedd-prepare": ["Prepare (download + tokenize + cache) datasets", "--config", "--workdir", "--dataset",
                     "--split", *CONFIG_NAMES],
}
# What pip's console-script wrapper does (bin/sedd-sample: argv[0] is the script, `__main__` the wrapper), for
# every script of setup.py whether or not this environment was installed since it gained one.
CONSOLE_SCRIPT = ("import os, sys; from importlib import import_module; "
                  "sys.argv[0] = os.path.join(os.path.dirname(sys.executable), sys.argv[1]); "
                  "run = import_module(sys.argv[2]).run; del sys.argv[1:3]; sys.exit(run())")


def _run_all(commands: dict) -> dict:
    """{name: argv} -> {name: CompletedProcess}, the processes run side by side (each imports JAX)."""
    procs = {name: subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for name, argv in commands.items()}
    done = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


@pytest.fixture(scope="module")
def helps():
    commands = {}
    for script, module in SCRIPTS.items():
        commands[script] = [sys.executable, "-c", CONSOLE_SCRIPT, script, module, "--help"]
        commands[f"python -m {module}"] = [sys.executable, "-m", module, "--help"]
    return _run_all(commands)


def test_every_console_script_of_setup_py_is_covered():
    declared = dict(re.findall(r'"(sedd-[\w-]+)=(sedd_jax[\w.]+):run"', (REPO / "setup.py").read_text()))
    assert declared == SCRIPTS


@pytest.mark.parametrize("how", ["script", "module"])
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_help_shows_description_flags_and_defaults(helps, script, how):
    command = script if how == "script" else f"python -m {SCRIPTS[script]}"
    proc = helps[command]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert command in proc.stdout and "Traceback" not in proc.stderr
    text = " ".join(proc.stdout.split())  # help wraps lines
    missing = [shown for shown in HELP_SHOWS[script] if shown not in text]
    assert not missing, (missing, proc.stdout)


def test_sample_steps_default_to_the_checkpoint_config_and_model_path_is_an_alias(tmp_path, capsys):
    output = tmp_path / "samples.jsonl"
    assert json.loads((TINY_CHECKPOINT / "config.json").read_text())["sampling"]["steps"] == 128
    rc = sample.main([f"--model_path={TINY_CHECKPOINT}", "--ids_only", f"--output={output}"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "128 analytic steps (the checkpoint config's sampling.steps; --steps to change)" in err
    assert "sampling step 120/128" in err and "warning" not in err
    record = json.loads(output.read_text())
    assert record["steps"] == 128 and record["checkpoint"] == str(TINY_CHECKPOINT) and len(record["ids"]) == 32
    assert evaluate.build_parser().parse_args(["--model_path=m", "--dataset=ptb"]).checkpoint == "m"
    assert evaluate_samples.build_parser().parse_args(["--judge=j", "--model_path=m"]).checkpoint == "m"


@pytest.mark.parametrize("sampling_config, expected", [
    ({"steps": 64}, 64), ({}, 1024), ({"steps": 0}, 1024), ({"steps": "64"}, 1024), (None, 1024)])
def test_default_steps_without_a_usable_config_value_is_the_reference_default(sampling_config, expected):
    config = ml_collections.ConfigDict({"tokens": 50} if sampling_config is None else {"sampling": sampling_config})
    steps, source = sample.default_steps(config)
    assert steps == expected
    assert ("sampling.steps" in source) and (("run_sample.py" in source) == (expected == 1024))


def test_length_beyond_the_trained_length_warns_and_runs(capsys):
    rc = sample.main([f"--checkpoint={TINY_CHECKPOINT}", "--ids_only", "--steps=2", "--length=40"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: --length=40 is longer than the model's trained length 32: rotary positions "
                        "beyond 32 extrapolate and sample quality degrades"]
    assert len(out.split()) == 40 and "sampling.steps" not in err  # --steps given: no note on its default


def test_skip_unchanged_on_a_time_conditioned_checkpoint_is_one_error_line(capsys):
    rc = sample.main([f"--checkpoint={TINY_CHECKPOINT}", "--ids_only", "--steps=2", "--skip_unchanged=on"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and err[-1].startswith("error: ") and "skip_unchanged needs a time-independent network" in err[-1]


FAILING = {  # an expected failure of each argparse command line, raised before any checkpoint is read
    "sample": (sample, ["--checkpoint=/nonexistent/ckpt", "--ids_only"], "checkpoint directory '/nonexistent/ckpt' "
               "does not exist"),
    "evaluate": (evaluate, ["--checkpoint=/nonexistent/ckpt", "--dataset=bogus"], "unknown dataset 'bogus'"),
    "evaluate_samples": (evaluate_samples, ["--judge=/nonexistent/judge", "--samples=/nonexistent/s.jsonl"],
                         "/nonexistent/judge"),
}


@pytest.mark.parametrize("name", list(FAILING))
def test_error_is_one_line_and_verbose_adds_the_traceback(capsys, name):
    module, argv, message = FAILING[name]
    assert module.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert module.main(argv + ["--verbose"]) == 1
    verbose = capsys.readouterr().err
    assert verbose.startswith("Traceback (most recent call last):") and verbose.endswith(err), verbose
    assert len(verbose.splitlines()) > 3


@pytest.mark.parametrize("name", list(FAILING))
def test_compilation_cache_that_cannot_be_created_is_one_error_line(capsys, tmp_path, name):
    module, argv, _ = FAILING[name]
    (tmp_path / "file").write_text("in the way")
    assert module.main(argv + [f"--compilation_cache={tmp_path / 'file' / 'xla'}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: cannot create the compilation cache directory "
                                                   f"{tmp_path / 'file' / 'xla'}"), err
    assert "--compilation_cache= to compile without the cache" in err
    assert (tmp_path / "file").read_text() == "in the way"


@pytest.mark.parametrize("name", list(FAILING))
def test_bad_flag_is_one_usage_line_and_one_error_line(capsys, name):
    module, argv, _ = FAILING[name]
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv + ["--bogus=1"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("usage: ") and "--help` lists the flags" in lines[0], lines
    assert lines[1].endswith("error: unrecognized arguments: --bogus=1"), lines


def test_convert_says_what_needs_no_conversion(tmp_path):
    workdir, converted_dir = tmp_path / "runs" / "tiny", tmp_path / "converted"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "config.json").write_text("{}")
    converted_dir.mkdir()
    (converted_dir / "config.json").write_text(json.dumps({"sedd_jax_format": 1}))
    convert = [sys.executable, "-m", "sedd_jax.convert"]
    done = _run_all({
        "workdir": convert + [f"--model_path={workdir}", f"--output={tmp_path / 'out1'}"],
        "converted": convert + [f"--checkpoint={converted_dir}", f"--output={tmp_path / 'out2'}"],
        "verbose": convert + [f"--checkpoint={tmp_path / 'missing'}", f"--output={tmp_path / 'out3'}", "--verbose"],
    })
    for name in ("workdir", "converted"):
        proc = done[name]
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
        assert "already a sedd-jax checkpoint" in proc.stderr and "no conversion needed" in proc.stderr
        assert "download" not in proc.stderr
    assert f"{workdir} is a sedd-jax training workdir" in done["workdir"].stderr
    assert f"`sedd-sample --checkpoint={workdir}` and `sedd_jax.pretrained.load('{workdir}')`" in done["workdir"].stderr
    assert "written by sedd_jax.convert" in done["converted"].stderr
    verbose = done["verbose"]
    assert verbose.returncode == 1 and verbose.stderr.startswith("Traceback (most recent call last):")
    assert verbose.stderr.splitlines()[-1].startswith(f"error: checkpoint directory '{tmp_path / 'missing'}' "
                                                      "does not exist")
    assert not any((tmp_path / f"out{i}").exists() for i in (1, 2, 3))
