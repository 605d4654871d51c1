"""Real multi-process training: two local processes (jax.distributed on 127.0.0.1, 4 fake CPU devices each)
against one process with 8, resume of their checkpoint by a single process, and a killed peer."""

import os
import socket
import subprocess
import sys
import time

from tests.train_testing import REPO, main_command, profiled_steps, read_metrics, train_losses

MESH = dict(mesh__data=2, mesh__fsdp=4)


def _env(devices: int) -> dict:
    return dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu",
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_two(tmp_path, workdir, *extra, **overrides) -> list[subprocess.Popen]:
    cmd = [sys.executable] + main_command(tmp_path, workdir, **MESH, **overrides)[1:]
    port = _free_port()
    return [subprocess.Popen(cmd + [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                                    f"--process_id={i}", *extra],
                             env=_env(4), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(2)]


def _run_one(tmp_path, workdir, devices, **overrides) -> subprocess.CompletedProcess:
    cmd = [sys.executable] + main_command(tmp_path, workdir, **overrides)[1:]
    return subprocess.run(cmd, env=_env(devices), cwd=REPO, capture_output=True, text=True, timeout=600)


def test_two_processes_train_like_one_and_share_one_checkpoint(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    single = _run_one(tmp_path, one, 8, training__n_iters=6, **MESH)
    assert single.returncode == 0, single.stderr
    procs = _start_two(tmp_path, two, training__n_iters=4, training__profile_skip=1, training__profile_steps=2)
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    # Only process 0 prints progress and writes metrics (one line per step, not two).
    assert "step 4/4" in outs[0] and "step 4/4" not in outs[1] and "initialised" not in outs[1]
    assert [m["step"] for m in read_metrics(two) if "train_loss" in m] == [1, 2, 3, 4]
    la, lb = train_losses(one), train_losses(two)
    for step in lb:
        assert abs(la[step] - lb[step]) < 1e-4 * abs(la[step]), (step, la[step], lb[step])
    # One checkpoint for the run (complete step directories only); each process recorded its data position.
    steps = os.listdir(two / "checkpoints")
    assert "4" in steps and all(s.isdigit() for s in steps), steps
    saved = {f for f in os.listdir(two / "checkpoints" / "4" / "data") if f.endswith(".json")}
    assert saved == {"process_0-of-2.json", "process_1-of-2.json"}
    # Each process traced steps 2-3 of its own devices into a directory of its own.
    for i in range(2):
        assert profiled_steps(two / "profiles" / f"process_{i}") == [[2, 3]], i
    assert not (two / "plugins").exists()
    # A single process (one device) restores the two-process checkpoint and continues the same run.
    resumed = _run_one(tmp_path, two, 1, training__n_iters=6)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed {two} from step 4" in resumed.stdout
    lc = train_losses(two)
    for step in (5, 6):
        assert abs(la[step] - lc[step]) < 1e-4 * abs(la[step]), (step, la[step], lc[step])


def test_a_killed_process_stops_the_other_with_an_error(tmp_path):
    workdir = tmp_path / "run"
    procs = _start_two(tmp_path, workdir, "--heartbeat_timeout=10", training__n_iters=100000,
                       training__eval_freq=100000, training__snapshot_freq_for_preemption=100000)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        assert all(p.poll() is None for p in procs), [p.communicate()[0] for p in procs]
        time.sleep(0.5)
    procs[1].kill()
    killed_at = time.time()
    try:
        out, _ = procs[0].communicate(timeout=120)
    finally:
        for p in procs:
            p.kill()
    assert procs[0].returncode != 0
    assert time.time() - killed_at < 120
    assert "stopped sending heartbeats" in out or "another task died" in out, out[-3000:]
