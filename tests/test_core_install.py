"""The core install (`pip install sedd-jax`, no extras) loads every checkpoint format, samples, infills and scores
without TensorFlow, TFDS, grain, clu or TensorBoard; the training side then fails with one line naming the extra.

The core environment is built offline: a new virtualenv whose site-packages holds symlinks to exactly the
distributions that the installed sedd-jax's core requirements need (their closure, read with importlib.metadata
from this environment), and the repository's sedd_jax through a .pth file. No package is downloaded.
"""

import importlib.metadata
import os
import pathlib
import re
import site
import subprocess
import sysconfig
import venv
import zipfile

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.evaluate_testing import char_checkpoint
from tests.train_testing import REPO

TRAIN_ONLY = ("tensorflow", "tensorflow-cpu", "tensorflow-datasets", "grain", "clu", "tensorboard")


def _distributions() -> dict:
    """canonical name -> Distribution installed in this environment's site-packages (not the repository's stale
    *.egg-info that `python` finds when run from the repository root)."""
    found = {}
    for dist in importlib.metadata.distributions(path=site.getsitepackages()):
        found.setdefault(canonicalize_name(dist.metadata["Name"]), dist)
    return found


def _core_requirements(installed: dict) -> list[Requirement]:
    """The requirements of `pip install sedd-jax` (no extras), markers evaluated for this interpreter."""
    requirements = [Requirement(line) for line in installed["sedd-jax"].requires or []]
    return [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]


def _closure(installed: dict) -> dict:
    """canonical name -> Distribution of every distribution the core requirements need, transitively (markers
    evaluated for this interpreter, requested extras of dependencies followed)."""
    followed, todo = {}, _core_requirements(installed)
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        extras = {"", *req.extras} - followed.setdefault(name, set())
        if not extras:
            continue
        followed[name] |= extras
        assert name in installed, f"{name} (needed by the core install) is not installed here"
        for line in installed[name].requires or []:
            dep = Requirement(line)
            if dep.marker is None or any(dep.marker.evaluate({"extra": extra}) for extra in extras):
                todo.append(dep)
    return {name: installed[name] for name in followed}


def _link_distributions(dists: dict, installed: dict, site_dir: pathlib.Path, target: pathlib.Path) -> None:
    """Symlinks into `target` the files of `dists` (from `site_dir`): a whole directory when only these
    distributions have files in it, else (a namespace package shared with others) a real directory of links."""
    tree = {}  # nested dicts: path part -> (owners, children)
    for name, dist in installed.items():
        if pathlib.Path(dist.locate_file("")).resolve() != site_dir.resolve():
            continue
        for path in dist.files or []:
            parts = pathlib.PurePosixPath(str(path)).parts
            if not parts or parts[0] == ".." or "__pycache__" in parts:
                continue
            node = tree
            for part in parts:
                owners, children = node.setdefault(part, (set(), {}))
                owners.add(name)
                node = children
    wanted = set(dists)

    def link(node, source: pathlib.Path, destination: pathlib.Path):
        for part, (owners, children) in node.items():
            if not owners & wanted:
                continue
            if owners <= wanted or not children:
                (destination / part).symlink_to(source / part)
            else:
                (destination / part).mkdir()
                link(children, source / part, destination / part)

    link(tree, site_dir, target)


@pytest.fixture(scope="module")
def installed():
    return _distributions()


def _virtualenv(root: pathlib.Path, dists: dict, installed: dict) -> str:
    """A virtualenv at `root` holding exactly `dists` (linked from this environment) and this repository's
    sedd_jax; returns its python."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(root)
    target = pathlib.Path(sysconfig.get_path("purelib", vars={"base": str(root), "platbase": str(root)}))
    site_dir = pathlib.Path(installed["jax"].locate_file(""))
    _link_distributions(dists, installed, site_dir, target)
    (target / "sedd_jax_repository.pth").write_text(REPO + "\n")
    return str(root / "bin" / "python")


def _wheel_of(dist, directory: pathlib.Path) -> pathlib.Path:
    """A wheel of an installed pure-Python distribution, zipped from its installed files (no index needed)."""
    path = directory / f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for file in dist.files or []:
            parts = pathlib.PurePosixPath(str(file)).parts
            if parts and parts[0] != ".." and "__pycache__" not in parts:
                wheel.write(dist.locate_file(file), str(file))
    return path


@pytest.fixture(scope="module")
def core_python(tmp_path_factory, installed):
    """The python of a virtualenv that has only the core install (and this repository's sedd_jax)."""
    return _virtualenv(tmp_path_factory.mktemp("core") / "venv", _closure(installed), installed)


def _run(python, *args, cwd):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run([python, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_core_requirements_hold_no_training_stack(installed):
    names = {canonicalize_name(r.name) for r in _core_requirements(installed)}
    assert {"jax", "flax", "orbax-checkpoint", "sentencepiece"} <= names
    assert not names & set(TRAIN_ONLY), names
    closure = set(_closure(installed))
    assert not closure & set(TRAIN_ONLY), sorted(closure & set(TRAIN_ONLY))
    train = {canonicalize_name(Requirement(r).name) for r in installed["sedd-jax"].requires
             if 'extra == "train"' in r}
    assert {"tensorflow-datasets", "tensorflow-cpu", "grain", "clu", "tensorboard"} <= train


CORE_SCRIPT = r"""
import json, os, sys

missing = []
for name in ("tensorflow", "tensorflow_datasets", "grain", "clu", "tensorboard", "tiktoken"):
    try:
        __import__(name)
    except ImportError:
        missing.append(name)

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

import sedd_jax.evaluate, sedd_jax.likelihood, sedd_jax.sample  # the core's entry points import
from sedd_jax import converted, data, official, pretrained

checkpoint, work, corpus = sys.argv[1:]
config, params = official.read_official(checkpoint)
converted.save(os.path.join(work, "converted"), config, params)
workdir = os.path.join(work, "workdir")  # a training workdir as pretrained.load reads it
os.makedirs(workdir)
with open(os.path.join(checkpoint, "config.json")) as f, open(os.path.join(workdir, "config.json"), "w") as g:
    g.write(f.read())
with ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("ema",)) as manager:
    manager.save(3, args=ocp.args.Composite(ema=ocp.args.StandardSave(params)))

models = {kind: pretrained.load(path) for kind, path in
          (("official", checkpoint), ("converted", os.path.join(work, "converted")), ("workdir", workdir))}
model = models["official"]
gaps = {kind: max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), m.params, model.params)))
        for kind, m in models.items()}
ids, texts = model.sample(jax.random.key(0), batch_size=2, steps=4, prefix="the ", suffix=" end")
nats, stderr = model.log_likelihood_bound(["hello world", "abc def ghi jkl"], mc_samples=8)

train_errors = []
cfg = ml_collections.ConfigDict(dict(
    tokens=50, model=dict(length=32), training=dict(batch_size=2, seed=0), eval=dict(batch_size=2),
    data=dict(train="files", valid="files", tokenizer="char", files=corpus, cache_dir=os.path.join(work, "cache"),
              num_workers=0, download=False)))
for attempt in (lambda: data.create_datasets(cfg, work, process_index=0, process_count=1),
                lambda: list(data.load_documents("wikitext2", "validation", cfg))):
    try:
        attempt()
    except ImportError as e:
        train_errors.append(str(e))

print(json.dumps(dict(
    missing=missing, heavy=[m for m in ("tensorflow", "tensorflow_datasets", "grain", "clu") if m in sys.modules],
    param_gaps=gaps,
    is_workdir=models["workdir"].is_workdir, ids=ids.tolist(), texts=texts, prefix=model.tokenizer.encode("the "),
    suffix=model.tokenizer.encode(" end"), nats=nats.tolist(), train_errors=train_errors)))
"""


def test_core_install_loads_samples_infills_and_scores_without_tensorflow(core_python, tmp_path):
    import json

    from tests.data_testing import write_corpus

    corpus = write_corpus(tmp_path / "corpus", num_files=20)
    done = _run(core_python, "-c", CORE_SCRIPT, str(char_checkpoint(tmp_path)), str(tmp_path), corpus, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # the environment really lacks the training stack, and nothing imported it
    assert result["missing"] == ["tensorflow", "tensorflow_datasets", "grain", "clu", "tensorboard", "tiktoken"]
    assert result["heavy"] == []
    # the three checkpoint formats load the same weights
    assert result["is_workdir"] and result["param_gaps"] == {"official": 0, "converted": 0, "workdir": 0}
    # sampling with a clamped prefix and suffix (infilling)
    prefix, suffix = result["prefix"], result["suffix"]
    for row, text in zip(result["ids"], result["texts"]):
        assert len(row) == 32 and row[:len(prefix)] == prefix and row[-len(suffix):] == suffix
        assert text.startswith("the ") and text.endswith(" end")
    assert len(result["nats"]) == 2 and min(result["nats"]) > 0  # nats per sequence, DWDSE bound
    # the training side names the extra that installs it
    assert result["train_errors"] == [
        'the training data pipeline needs grain: pip install "sedd-jax[train]"',
        'reading TFDS datasets (openwebtext, wikitext, ptb, lm1b, ...) needs TensorFlow: pip install "sedd-jax[train]"']


def test_core_install_data_command_names_the_train_extra(core_python, tmp_path):
    done = _run(core_python, "-m", "sedd_jax.data.prepare", f"--config={REPO}/configs/tiny.py", "--dataset=wikitext2",
                "--config.data.tokenizer=char", "--config.tokens=28", f"--config.data.cache_dir={tmp_path}",
                f"--workdir={tmp_path / 'work'}", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        'error: reading TFDS datasets (openwebtext, wikitext, ptb, lm1b, ...) needs TensorFlow: '
        'pip install "sedd-jax[train]"')
    assert "Traceback" not in done.stderr
    # The trainer too: one line naming the extra, before anything is compiled or written.
    done = _run(core_python, "-m", "sedd_jax.main", "--config=tiny", f"--workdir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training needs") and last.endswith('pip install "sedd-jax[train]"'), last
    assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()


def test_core_install_compiles_for_a_topology(core_python, tmp_path):
    """sedd-compile needs no training extra (only a compiler: libtpu's for TPUs, JAX's CUDA plugin for GPUs)."""
    done = _run(core_python, "-m", "sedd_jax.compile", "--config=tiny", "--topology=cpu:2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("tiny on cpu:2: 2 x cpu on 1 host(s)") and done.stdout.rstrip().endswith("fits")
    done = _run(core_python, "-m", "sedd_jax.compile", "--config=tiny", "--topology=h100:8", cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        'error: compiling for h100 GPUs needs JAX\'s CUDA plugin: pip install -U "jax[cuda12]" (it compiles on '
        'machines without a GPU)')


def test_accelerator_script_runs_offline_on_the_core_install_without_ml_collections(installed, tmp_path):
    """bench/accelerator.sh on a machine like the GPU machines it is written for: jax, flax, optax, orbax and chex
    but neither the data stack nor ml-collections, and no package index. It installs ml-collections from the
    wheel in WHEELS (into a temporary folder) and prints every figure, with the config's remat policy and with
    none (tiny settings, CPU, fused attention, the GPU's runs as well), whatever run fails; with its time budget
    spent, only the default program's."""
    dists = {name: dist for name, dist in _closure(installed).items() if name != "ml-collections"}
    dists["pip"] = installed["pip"]
    python = _virtualenv(tmp_path / "venv", dists, installed)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel_of(installed["ml-collections"], wheels)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith("PIP_")}
    env.update(PATH=f"{os.path.dirname(python)}:{env['PATH']}", JAX_PLATFORMS="cpu", WHEELS=str(wheels),
               PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1",  # offline: no index, no local wheel folders
               SIZE="tiny", LENGTH="32", BATCH="2", TRAIN_STEPS="1", SAMPLE_BATCH="2", SAMPLE_STEPS="2",
               EVAL_BATCH="2", DTYPE="float32",
               ATTENTIONS="fused",  # the GPU fast path; plain runs the same code with a flag
               REMATS="bogus none")  # a run that fails (an unknown policy) stops none of the others
    gpu_runs = dict(BACKEND="gpu", ROOFLINE_TOPOLOGY="h200")  # the GPU's runs as well, on this CPU
    assert _run(python, "-c", "import ml_collections", cwd=tmp_path).returncode == 1  # really missing
    # without the wheel: one message saying how to bring it, before anything runs
    done = subprocess.run(["bash", f"{REPO}/bench/accelerator.sh", str(tmp_path / "no_wheel")], capture_output=True,
                          text=True, cwd=tmp_path, env={**env, "WHEELS": str(tmp_path / "empty")}, timeout=120)
    assert done.returncode == 1 and "=== train" not in done.stdout, done.stdout + done.stderr
    assert "error: ml-collections is not installed and pip could not fetch it" in done.stderr, done.stderr
    assert "pip download --no-deps --only-binary=:all: -d .whl ml-collections" in done.stderr
    results = tmp_path / "results"
    every_run = {"BUDGET_S": "3600"}  # however loaded this machine is (the default, 300 s, is for SEDD-small on a GPU)
    done = subprocess.run(["bash", f"{REPO}/bench/accelerator.sh", str(results)], capture_output=True, text=True,
                          cwd=tmp_path, env={**env, **gpu_runs, **every_run}, timeout=900)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-3000:]
    log = (results / "accelerator.txt").read_text()
    assert "argument --remat: invalid choice: 'bogus'" in log
    assert log.rstrip().endswith("failed (its output is above): train: tiny float32 L=32 batch 2 attention=fused "
                                 "remat=bogus"), log[-2000:]
    sections = dict(section.split("\n", 1) for section in log.split("=== ")[1:])  # header -> output
    for remat, policy in (("config", "dots_no_batch"), ("none", "none")):  # the tiny config's, and none
        train = sections[f"train: tiny float32 L=32 batch 2 attention=fused remat={remat}"]
        assert f"attention fused, scan_blocks True, remat {policy}, train: last layers at masked positions" in train
        assert "train step median" in train and "tokens/s" in train and "MFU" in train, train
    whole = sections["train: tiny float32 L=32 batch 2 attention=fused remat=config, whole network"]
    assert "remat dots_no_batch, train: last layers at all positions" in whole and "MFU" in whole, whole
    sample = sections["sample: tiny float32 L=32 batch 2 attention=fused"]
    assert "bare forward + exp [2, 32, " in sample, sample
    assert re.search(r"analytic +unbiased +2 steps \+ denoiser: median .* tokens/s", sample), sample
    bound = sections["likelihood: tiny float32 L=32 batch 2 attention=fused"]
    assert re.search(r"whole network +: median .* tokens x draws/s", bound), bound
    assert re.search(r"masked positions only: [0-9.]+x \| largest difference of the draws", bound), bound
    # the GPU's runs: the default program's profile and compiled program, read back by the roofline against the
    # profile's kernel times; the same step with XLA's zero-fill pass (which the CPU ignores: the same first step)
    assert list(sections)[:3] == ["train: tiny float32 L=32 batch 2 attention=fused remat=config",
                                  "roofline: tiny float32 L=32 batch 2 attention=fused remat=config",
                                  "sample: tiny float32 L=32 batch 2 attention=fused"]  # the default program first
    default = sections["train: tiny float32 L=32 batch 2 attention=fused remat=config"]
    assert f"program written to {results}/train_step.hlo" in default
    assert f"profile of 3 steps written to {results}/profile/plugins/profile/" in default
    roofline = sections["roofline: tiny float32 L=32 batch 2 attention=fused remat=config"]
    assert f"program read from {results}/train_step.hlo" in roofline and "at the roofline:" in roofline
    assert "measured (3 traced steps): the program's kernels took" in roofline, roofline
    zero_fill = sections["train: tiny float32 L=32 batch 2 attention=fused remat=config, "
                         "--xla_gpu_enable_dus_accumulator_zero_init_elimination"]
    first_step = re.compile(r"first step: loss [\d.]+ nats/token, gradient norm [\d.]+")
    assert first_step.search(zero_fill).group() == first_step.search(default).group()
    assert len(sections) == 8, list(sections)
    assert re.search(r"took \d+ s \(budget 3600 s\)", log) and "skipped" not in log
    assert "figures written to" in done.stdout
    # past its budget the script still measures the default program, then names what it skipped
    budget = subprocess.run(["bash", f"{REPO}/bench/accelerator.sh", "budget"], capture_output=True, text=True,
                            cwd=tmp_path, env={**env, "BUDGET_S": "0"}, timeout=600)
    assert budget.returncode == 0, budget.stdout[-2000:] + budget.stderr[-3000:]
    log = (tmp_path / "budget" / "accelerator.txt").read_text()  # RESULTS_DIR is the caller's relative path
    assert [line for line in log.splitlines() if line.startswith("=== ")] == [
        "=== train: tiny float32 L=32 batch 2 attention=fused remat=config",
        "=== sample: tiny float32 L=32 batch 2 attention=fused"], log
    assert "train step median" in log and "analytic" in log
    assert [line for line in log.splitlines() if line.startswith("skipped")] == [
        f"skipped for the budget (raise BUDGET_S to run it): {header}" for header in (
            "train: tiny float32 L=32 batch 2 attention=fused remat=config, whole network",
            "likelihood: tiny float32 L=32 batch 2 attention=fused",
            "train: tiny float32 L=32 batch 2 attention=fused remat=bogus",
            "train: tiny float32 L=32 batch 2 attention=fused remat=none")], log
    # installed only for the run: the environment is as it was
    assert _run(python, "-c", "import ml_collections", cwd=tmp_path).returncode == 1
