"""The trainer: learning, exact resume, preemption, sharding over fake devices, bad input."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from sedd_jax import checkpoints, configs, flops, parallel, pretrained, progress, train
from tests.tmpfs_testing import resize, tmpfs
from tests.train_testing import REPO, config, main_command, profiled_steps, read_metrics, train_losses


def _env(devices: int = 1) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _run(cmd, devices=1, timeout=600):
    cmd = [sys.executable] + cmd[1:]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(devices), cwd=REPO)


@pytest.fixture(scope="module")
def run20(tmp_path_factory):
    """(base, workdir): a 20-step run of config(base, keep_checkpoints=4), checkpoints at 5, 10, 15, 20, trained once
    for the tests that resume, damage or refuse it; they work on copies (`_copy_run`) with config(base, ...)."""
    base = tmp_path_factory.mktemp("run20")
    train.train_and_evaluate(config(base, training__n_iters=20, training__keep_checkpoints=4), str(base / "run"))
    return base, base / "run"


def _copy_run(run20, tmp_path):
    base, workdir = run20
    shutil.copytree(workdir, tmp_path / "run")
    return base, tmp_path / "run"


def test_learns_and_writes_workdir(tmp_path, caplog):
    workdir = str(tmp_path / "run")
    last = train.train_and_evaluate(config(tmp_path, training__n_iters=100, optim__lr=3e-3, training__eval_freq=25), workdir)
    losses = train_losses(workdir)
    assert sorted(losses) == list(range(1, 101))
    first, final = np.mean([losses[s] for s in (1, 2, 3)]), np.mean([losses[s] for s in range(91, 101)])
    assert final < 0.87 * first, (first, final)  # a 1-block model, 100 steps: past the unigram entropy
    assert abs(first - np.log(28)) < 0.3  # zero output layer: ~ln(tokens) nats per token at init
    evals = [m for m in read_metrics(workdir) if "eval_loss" in m]
    assert [m["step"] for m in evals] == [25, 50, 75, 100]
    assert all(np.isclose(m["eval_ppl_bound"], np.exp(m["eval_loss"])) for m in evals)
    assert all(0 < m["eval_loss_ci95"] < 0.5 * m["eval_loss"] for m in evals)      # 4 stratified draws x 8 blocks
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]                         # the same blocks: it learns
    assert last["step"] == 100
    assert max(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == 100
    samples = open(os.path.join(workdir, "samples", "iter_100.txt")).read()
    assert samples.count("=== sample") == 2
    events = [f for f in os.listdir(workdir) if f.startswith("events.out.tfevents")]
    assert len(events) == 1
    assert b"samples" in open(os.path.join(workdir, events[0]), "rb").read()      # snapshot texts in TensorBoard
    log = open(os.path.join(workdir, "train.log")).read().splitlines()            # the console, time-stamped
    assert any(" model: " in line and "hidden_size=32" in line for line in log)
    assert any(" step 100/100 | train_loss" in line for line in log)
    assert "finished step 100" in log[-1]
    # The workdir is a checkpoint pretrained.load reads (EMA weights), quietly. (Training may have logged orbax's
    # timing notices, "Waiting for previous save to complete took ...", on a loaded machine: not this check's.)
    caplog.clear()
    with caplog.at_level("WARNING"):
        model = pretrained.load(workdir)
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert model.graph.dim == 29 and model.config.model.hidden_size == 32
    ids, texts = model.sample(jax.random.key(0), 2, 4)
    assert ids.shape == (2, 32) and len(texts) == 2


def test_bfloat16_training_runs_and_learns(tmp_path):
    workdir = str(tmp_path / "bf16")
    train.train_and_evaluate(config(tmp_path, model__compute_dtype="bfloat16", training__n_iters=100,
                                    optim__lr=3e-3, training__eval_freq=100), workdir)
    losses = train_losses(workdir)
    assert all(np.isfinite(v) for v in losses.values())
    first, final = np.mean([losses[s] for s in (1, 2, 3)]), np.mean([losses[s] for s in range(91, 101)])
    assert final < 0.9 * first, (first, final)   # as test_learns_and_writes_workdir, in float32
    params = pretrained.load(workdir).params
    assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype("float32")}  # bf16 compute, f32 weights


def test_time_independent_network_trains_and_samples_reusing_its_output(tmp_path):
    workdir = tmp_path / "run"
    train.train_and_evaluate(config(tmp_path, model__time_conditioning=False, training__n_iters=10,
                                    sampling__steps=32), str(workdir))
    assert json.loads((workdir / "config.json").read_text())["model"]["time_conditioning"] is False
    assert (workdir / "samples" / "iter_10.txt").read_text().count("=== sample") == 2   # the skipping sampler
    model = pretrained.load(workdir)
    assert not model.model.time_conditioning and model.skips_unchanged(steps=32, length=32)
    assert not model.skips_unchanged(steps=16, length=32)                 # fewer steps than tokens: no skips
    ids, texts = model.sample(jax.random.key(0), 2, 32)
    np.testing.assert_array_equal(ids, model.sample(jax.random.key(0), 2, 32, skip_unchanged=False)[0])
    assert len(texts) == 2


def test_exact_resume(run20, tmp_path):
    base, straight = run20
    resumed = str(tmp_path / "resumed")
    train.train_and_evaluate(config(base, training__n_iters=10), resumed)
    assert max(train_losses(resumed)) == 10
    train.train_and_evaluate(config(base, training__n_iters=20), resumed)
    a, b = train_losses(straight), train_losses(resumed)
    for step in range(11, 21):
        assert abs(a[step] - b[step]) <= 1e-6 * abs(a[step]), (step, a[step], b[step])
    # Every eval scores the same held-out blocks with the same draws: a resumed run's evals are the same too.
    evals = [{m["step"]: m["eval_loss"] for m in read_metrics(w) if "eval_loss" in m} for w in (straight, resumed)]
    assert sorted(evals[0]) == sorted(evals[1]) == [5, 10, 15, 20]
    for step in (15, 20):
        assert abs(evals[0][step] - evals[1][step]) <= 1e-6 * abs(evals[0][step]), step
    assert a[1] != a[2]  # the losses do change from step to step


def test_profile_traces_the_steps_asked_for(run20, tmp_path):
    base, workdir = _copy_run(run20, tmp_path)
    train.train_and_evaluate(config(base, training__n_iters=25, training__profile_skip=1,
                                    training__profile_steps=2), str(workdir))
    assert profiled_steps(workdir) == [[22, 23]]
    assert f"profiling train steps 22-23 into {workdir}/plugins/profile/" in (workdir / progress.LOG_FILE).read_text()
    # A run that ends inside the window still writes what it traced.
    train.train_and_evaluate(config(base, training__n_iters=27, training__profile_skip=1,
                                    training__profile_steps=5), str(workdir))
    assert profiled_steps(workdir) == [[22, 23], [27]]
    assert max(train_losses(workdir)) == 27
    with pytest.raises(ValueError, match=r"training.profile_steps must be a whole number >= 0, got -1"):
        configs.validate(config(base, training__profile_steps=-1), device_count=1, process_count=1)


def test_mfu_is_reported_where_the_chips_peak_is_known(run20, tmp_path, monkeypatch):
    base, workdir = _copy_run(run20, tmp_path)
    assert not [m for m in read_metrics(workdir) if "mfu" in m]  # CPUs: no peak, no MFU
    peak_per_chip = 1e9
    monkeypatch.setattr(flops, "peak_flops", lambda kind, dtype: peak_per_chip if kind == "cpu" else None)
    c = config(base, training__n_iters=24)
    train.train_and_evaluate(c, str(workdir))
    logged = [m for m in read_metrics(workdir) if m["step"] > 20 and "train_loss" in m]
    assert [m["step"] for m in logged] == [21, 22, 23, 24]
    flops_per_step = flops.train_flops_per_token(c, c.tokens + 1) * c.training.batch_size * c.model.length
    for m in logged:
        assert m["mfu"] == pytest.approx(m["steps_per_sec"] * flops_per_step / (peak_per_chip * jax.device_count()))
    assert f"MFU {100 * logged[-1]['mfu']:.1f}% |" in (workdir / progress.LOG_FILE).read_text()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_stop_signal_saves_current_step_and_resumes(tmp_path, stop):
    workdir = tmp_path / "preempted"
    cache = f"--compilation_cache={tmp_path / 'xla'}"
    cmd = main_command(tmp_path, workdir, training__n_iters=100000, training__snapshot_freq_for_preemption=100000,
                       training__eval_freq=100000) + [cache]
    proc = subprocess.Popen([sys.executable] + cmd[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=_env(), cwd=REPO)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 5):
        time.sleep(0.5)
    proc.send_signal(stop)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    stopped = max(train_losses(workdir))
    assert f"saved step {stopped}; rerun the same command to resume" in out and "Traceback" not in out
    steps = [int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit()]
    assert max(steps) == stopped
    if stop == signal.SIGINT:
        return
    assert any(name.startswith("jit_train_step-") for name in os.listdir(tmp_path / "xla"))
    resume = [sys.executable] + main_command(tmp_path, workdir, training__n_iters=stopped + 3)[1:] + [cache]
    done = subprocess.run(resume, capture_output=True, text=True, timeout=600, env=dict(_env(), JAX_LOG_COMPILES="1"),
                          cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert f"resumed {workdir} from step {stopped}" in done.stdout
    assert "Persistent compilation cache hit for 'jit_train_step'" in done.stderr   # not compiled again
    assert max(train_losses(workdir)) == stopped + 3


def test_same_losses_on_one_and_eight_devices_and_resume_across_meshes(tmp_path):
    # Eight devices as data x fsdp x tensor = 2 x 2 x 2 (heads and MLP split over the tensor axis); data x fsdp
    # alone (2 x 4) is tests/test_multiprocess_train.py's mesh.
    single, sharded = tmp_path / "one", tmp_path / "eight"
    a = _run(main_command(tmp_path, single, training__n_iters=8))
    b = _run(main_command(tmp_path, sharded, training__n_iters=6, mesh__data=2, mesh__fsdp=2, mesh__tensor=2),
             devices=8)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert "'data': 2, 'fsdp': 2, 'tensor': 2" in b.stdout
    share = float(b.stdout.split("per-device parameter share ")[1].split()[0])
    assert share < 0.6, b.stdout  # split over the fsdp and tensor shards (small conditioning weights stay replicated)
    la, lb = train_losses(single), train_losses(sharded)
    assert sorted(la) == list(range(1, 9)) and sorted(lb) == list(range(1, 7))
    for step in lb:
        assert abs(la[step] - lb[step]) < 1e-4 * abs(la[step]), (step, la[step], lb[step])
    # The sharded checkpoint restores onto a single device and continues the same trajectory.
    c = _run(main_command(tmp_path, sharded, training__n_iters=8))
    assert c.returncode == 0, c.stderr
    assert f"resumed {sharded} from step 6" in c.stdout and "'data': 1, 'fsdp': 1" in c.stdout
    lc = train_losses(sharded)
    for step in (7, 8):
        assert abs(la[step] - lc[step]) < 1e-4 * abs(la[step]), (step, la[step], lc[step])


CHECK_SHARDED = """
import jax, jax.numpy as jnp, ml_collections
from jax.sharding import NamedSharding, PartitionSpec
from sedd_jax import parallel
config = ml_collections.ConfigDict(dict(mesh=dict(data=2, fsdp=4, tensor=1)))
mesh = parallel.create_mesh(config)
params = {"w": jnp.ones((64, 32))}
sharded = jax.device_put(params, NamedSharding(mesh, PartitionSpec("fsdp")))
print("sharded ratio", parallel.check_sharded(sharded, mesh)["ratio"])
try:
    parallel.check_sharded(jax.device_put(params, NamedSharding(mesh, PartitionSpec())), mesh)
except RuntimeError as e:
    print("replicated:", e)
"""


def test_check_sharded_fails_on_replicated_parameters():
    done = subprocess.run([sys.executable, "-c", CHECK_SHARDED], capture_output=True, text=True, env=_env(8),
                          cwd=REPO, timeout=300)
    assert "sharded ratio 0.25" in done.stdout, done.stderr
    assert "replicated: parameters are not sharded" in done.stdout


# ------------------------------------------------------------------------------- runs that go wrong

def test_diverging_run_stops_and_keeps_finite_weights(run20, tmp_path):
    base, workdir = _copy_run(run20, tmp_path)
    with pytest.raises(train.TrainingDivergedError, match="the last 5 updates were skipped .* the last applied "
                                                          "update was step 20 and the newest checkpoint is step"):
        train.train_and_evaluate(config(base, training__n_iters=60, optim__lr=1e6,
                                        training__max_skipped_updates=5), str(workdir))
    metrics = read_metrics(workdir)
    assert [m["step"] for m in metrics if "train_loss" in m][-5:] == [21, 22, 23, 24, 25]
    assert metrics[-1]["skipped_updates"] == 5
    model = pretrained.load(workdir)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(model.params))


def _corrupt(checkpoint, item: str) -> None:
    """Overwrites 4 KiB in the middle of the largest data file of `checkpoint/item` with 0xFF bytes."""
    data = max((p for p in (checkpoint / item).rglob("*") if p.is_file() and p.parent.name == "d"),
               key=lambda p: p.stat().st_size)
    with open(data, "r+b") as f:
        f.seek(data.stat().st_size // 2 // 4 * 4)
        f.write(b"\xff" * 4096)


def _change_fingerprint(checkpoint) -> None:
    """Doubles one array's recorded sums: as if that array had changed on disk since the save."""
    path = checkpoint / "fingerprint" / "metadata"
    record = json.loads(path.read_text())
    record["arrays"][2] = [2 * v for v in record["arrays"][2]]
    path.write_text(json.dumps(record))


def test_damaged_newest_checkpoints_fall_back_to_a_usable_one(run20, tmp_path):
    base, workdir = _copy_run(run20, tmp_path)
    straight = train_losses(workdir)
    _corrupt(workdir / "checkpoints" / "20", "state")                  # flipped bytes in the newest
    _change_fingerprint(workdir / "checkpoints" / "15")                # an array changed on disk
    shutil.rmtree(workdir / "checkpoints" / "10" / "ema")             # a deleted part
    done = _run(main_command(base, workdir, training__n_iters=12, training__keep_checkpoints=4))
    assert done.returncode == 0, done.stderr
    assert "checkpoint 20 is not usable (" in done.stdout, done.stdout
    assert "checkpoint 15 is not usable (1 of " in done.stdout and "differ from the fingerprint" in done.stdout
    assert "checkpoint 10 is not usable (FileNotFoundError: " in done.stdout, done.stdout
    assert f"resumed {workdir} from step 5" in done.stdout
    for step in (10, 15, 20):                                          # set aside, not deleted
        assert (workdir / checkpoints.UNUSABLE_DIR / str(step) / "state").is_dir()
    resumed = train_losses(workdir)
    assert sorted(resumed) == list(range(1, 13))                       # each step once: 13-20 dropped, 6-12 anew
    for step in range(6, 13):                                          # the same run again from step 5
        assert abs(resumed[step] - straight[step]) <= 1e-6 * abs(straight[step]), step


def test_full_disk_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path):
    workdir = tmp_path / "disk" / "run"
    with tmpfs(tmp_path / "disk", "64m"):
        train.train_and_evaluate(config(tmp_path, training__n_iters=5), str(workdir))
        used = shutil.disk_usage(workdir).used
        checkpoint = sum(p.stat().st_size for p in (workdir / "checkpoints" / "5").rglob("*") if p.is_file())
        resize(tmp_path / "disk", f"{(used + checkpoint // 2) // 1024}k")     # room for half a checkpoint more
        before = _snapshot(workdir / "checkpoints")
        done = _run(main_command(tmp_path, workdir, training__n_iters=10))
        assert done.returncode == 1
        error = done.stderr.strip().splitlines()[-1]
        assert error.startswith(f"error: no space left on device writing {workdir}/checkpoints ("), error
        assert error.endswith("the newest complete checkpoint is step 5; free space there (or lower "
                              "--config.training.keep_checkpoints) and rerun to resume from it"), error
        assert "Traceback" not in done.stderr and "Event loop is closed" not in done.stderr
        assert _snapshot(workdir / "checkpoints") == before                    # step 5 intact, nothing partial
        assert not [p for p in workdir.rglob("*") if ".tmp" in p.name or "orbax-checkpoint-tmp" in p.name]
        model = pretrained.load(str(workdir))
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(model.params))


def test_sigterm_before_the_first_step_exits_cleanly(tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable] + main_command(tmp_path, workdir)[1:], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO)
    deadline = time.time() + 120
    while not (workdir / checkpoints.LOCK_FILE).exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)                                   # during data preparation or compiling
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM before the first step; nothing to save" in out
    assert not (workdir / checkpoints.LOCK_FILE).exists()
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]
    assert not (workdir / "checkpoints").exists() or not list((workdir / "checkpoints").iterdir())


def test_metrics_are_strict_json(tmp_path):
    log = progress.MetricsLog(str(tmp_path))
    log.write(3, {"eval_loss": float("nan"), "eval_ppl_bound": float("inf"), "train_loss": 1.5})
    log.close()
    line = (tmp_path / "metrics.jsonl").read_text().strip()
    record = json.loads(line, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert record == {"step": 3, "eval_loss": None, "eval_ppl_bound": None, "train_loss": 1.5,
                      "nonfinite": ["eval_loss", "eval_ppl_bound"]}


def test_one_trainer_per_workdir(tmp_path):
    workdir = tmp_path / "run"
    with checkpoints.WorkdirLock(str(workdir)):
        started = time.time()
        with pytest.raises(ValueError, match=f"in use by another trainer \\(pid {os.getpid()} on "):
            train.train_and_evaluate(config(tmp_path), str(workdir))
        assert time.time() - started < 10
    assert not (workdir / checkpoints.LOCK_FILE).exists()
    # A lock left by a trainer that has exited (same host, no such process) is taken over.
    (workdir / checkpoints.LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid()}))
    with checkpoints.WorkdirLock(str(workdir)) as lock:
        assert lock.held and json.loads((workdir / checkpoints.LOCK_FILE).read_text())["pid"] == os.getpid()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_resume_refuses_meaning_changes_and_records_others(run20, tmp_path):
    base, workdir = _copy_run(run20, tmp_path)
    before = _snapshot(workdir)
    with pytest.raises(ValueError, match="cannot continue with this config \\(noise.type: workdir has 'loglinear', "
                                         "config has 'geometric'\\)"):
        train.train_and_evaluate(config(base, noise__type="geometric", training__n_iters=22), str(workdir))
    with pytest.raises(ValueError, match="160 sequences into the data stream .*not a whole number of batches of the new training.batch_size=12"):
        train.train_and_evaluate(config(base, training__batch_size=12, training__n_iters=22), str(workdir))
    assert _snapshot(workdir) == before
    train.train_and_evaluate(config(base, optim__lr=5e-4, training__batch_size=16, training__n_iters=22),
                             str(workdir))
    history = [json.loads(line) for line in (workdir / "config_history.jsonl").read_text().splitlines()]
    assert history[-1]["changes"]["optim.lr"] == {"from": 1e-3, "to": 5e-4}
    assert history[-1]["changes"]["training.batch_size"] == {"from": 8, "to": 16}
    assert json.loads((workdir / "config.json").read_text())["optim"]["lr"] == 5e-4
    assert max(train_losses(workdir)) == 22


# ------------------------------------------------------------------------------------------ bad input

def _snapshot(directory) -> dict:
    """{path: mtime} of every file but train.log (appended by every attempt, refused ones included)."""
    return {os.path.join(root, f): os.path.getmtime(os.path.join(root, f))
            for root, _, files in os.walk(directory) for f in files if f != progress.LOG_FILE}


def _last_log_line(workdir) -> str:
    return (workdir / progress.LOG_FILE).read_text().splitlines()[-1]


def test_rerunning_a_finished_run_says_so_without_compiling(run20, tmp_path, capsys, caplog):
    base, workdir = _copy_run(run20, tmp_path)
    before = _snapshot(workdir / "checkpoints")
    with caplog.at_level("WARNING"):
        assert train.train_and_evaluate(config(base, training__n_iters=20), str(workdir)) == {}
    assert not caplog.records, [r.getMessage() for r in caplog.records]     # orbax's notices on reads are gone
    out = capsys.readouterr().out
    assert "is already at step 20 of training.n_iters=20; raise --config.training.n_iters" in out
    assert "compiled" not in out
    assert _snapshot(workdir / "checkpoints") == before


def test_workdir_with_another_model_shape(run20, tmp_path):
    base, workdir = _copy_run(run20, tmp_path)
    before = _snapshot(workdir)
    with pytest.raises(ValueError, match="cannot continue with this config \\(model.hidden_size: workdir has 32, config has 64\\)"):
        train.train_and_evaluate(config(base, model__hidden_size=64), str(workdir))
    assert _snapshot(workdir) == before
    last = _last_log_line(workdir)                                  # why, for whoever opens the workdir later
    assert " stopped: ValueError: " in last and "(model.hidden_size: workdir has 32, config has 64)" in last


def test_mesh_that_does_not_fit(tmp_path):
    with pytest.raises(ValueError, match="= 3 devices, but 1 are available"):
        train.train_and_evaluate(config(tmp_path, mesh__data=3), str(tmp_path / "never"))
    assert not (tmp_path / "never").exists()


def test_batch_not_divisible_by_data_parallel_size(tmp_path):
    c = config(tmp_path, training__batch_size=12, mesh__data=8)
    with pytest.raises(ValueError, match="micro-batch .* = 12 is not divisible by the data-parallel size .* = 8"):
        configs.validate(c, device_count=8, process_count=1)
    c = config(tmp_path, training__batch_size=16, training__accum=3)
    with pytest.raises(ValueError, match="batch_size=16 is not divisible by training.accum=3"):
        configs.validate(c, device_count=1, process_count=1)


def test_cli_reports_bad_config_cleanly(tmp_path):
    done = _run(main_command(tmp_path, tmp_path / "w", graph__type="uniform"))
    assert done.returncode == 1
    assert "uniform graph requires model.scale_by_sigma=False" in done.stderr
    assert "Traceback" not in done.stderr


def test_mesh_shape_fills_minus_one():
    c = config_for_mesh(data=-1, fsdp=4, tensor=1)
    assert parallel.mesh_shape(c, device_count=8) == (2, 4, 1)
    with pytest.raises(ValueError, match="at most one of"):
        parallel.mesh_shape(config_for_mesh(data=-1, fsdp=-1, tensor=1), device_count=8)


def config_for_mesh(**mesh):
    import ml_collections
    return ml_collections.ConfigDict(dict(mesh=mesh))
