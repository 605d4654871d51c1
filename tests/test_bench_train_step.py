"""bench/train_step.py as a GPU run would use it: the first step's figures (to compare two programs), a profile of 3
more steps, and the compiled program for bench/roofline.py."""

import os
import re
import subprocess
import sys

import pytest

from tests.train_testing import REPO, profiled_steps


def test_prints_the_first_step_profiles_three_more_and_saves_the_program(tmp_path):
    model = ["--size=tiny", "--tokens=64", "--length=32", "--batch_size=2"]
    command = [sys.executable, os.path.join(REPO, "bench", "train_step.py"), *model, "--steps=1",
               f"--profile_dir={tmp_path}"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    saved = tmp_path / "step.hlo"
    runs = [subprocess.run(command + extra, capture_output=True, text=True, timeout=600, env=env)
            for extra in ([], [f"--save_hlo={saved}"])]
    assert all(run.returncode == 0 for run in runs), runs[0].stderr[-3000:]
    first = [re.search(r"first step: loss ([\d.]+) nats/token, gradient norm ([\d.]+)", run.stdout) for run in runs]
    assert all(first) and first[0].groups() == first[1].groups()  # the same state, batch and key every run
    assert float(first[0].group(1)) > 0 and float(first[0].group(2)) > 0
    # the library's rate on the MLP's input product of the step's shapes (batch 2 x length 32 rows), to read ratios by
    product = re.search(r"one product \[64, (\d+)\] x \[(\d+), (\d+)\] float32: ([\d,.]+) GFLOP/s", runs[0].stdout)
    assert product, runs[0].stdout[-2000:]
    hidden, inner, outer = (int(g) for g in product.groups()[:3])
    assert inner == hidden and outer == 4 * hidden and float(product.group(4).replace(",", "")) > 0
    traced = profiled_steps(tmp_path)
    assert traced and traced[-1] == [1, 2, 3]
    assert f"profile of 3 steps written to {tmp_path}/plugins/profile/" in runs[0].stdout

    # the saved program is the step's, and the roofline reads it back for a named chip (as bench/accelerator.sh does
    # with --topology=local on a GPU; on a CPU that has no data sheet, which it says)
    assert f"program written to {saved}" in runs[1].stdout
    assert "ENTRY" in saved.read_text() and "while" in saved.read_text()  # the blocks' scan
    roofline = [sys.executable, os.path.join(REPO, "bench", "roofline.py"), *model, f"--hlo={saved}"]
    read = subprocess.run(roofline + ["--topology=h200"], capture_output=True, text=True, timeout=300, env=env)
    assert read.returncode == 0, read.stderr[-3000:]
    assert f"program read from {saved}" in read.stdout and re.search(r"at the roofline: [\d.]+ ms", read.stdout)
    local = subprocess.run(roofline + ["--topology=local"], capture_output=True, text=True, timeout=300, env=env)
    assert local.returncode == 1 and "no data-sheet peak or bandwidth for 'cpu'" in local.stderr, local.stderr[-2000:]

    # the trace of the same run, set against the program's estimate: every kernel kind's measured time adds up to
    # the measured total
    compared = subprocess.run(roofline + ["--topology=h200", f"--profile={tmp_path}"], capture_output=True, text=True,
                              timeout=300, env=env)
    assert compared.returncode == 0, compared.stderr[-3000:]
    total = re.search(r"measured \(3 traced steps\): the program's kernels took ([\d.]+) ms per step against "
                      r"([\d.]+) ms at the roofline", compared.stdout)
    assert total and float(total.group(1)) > 0, compared.stdout[-3000:]
    table = compared.stdout.split("of roofline speed\n")[1].split("\n\n")[0].splitlines()
    kinds = {line.split()[0]: float(line.split()[1]) for line in table}
    assert "gemm" in kinds and kinds["gemm"] > 0  # the blocks' products
    assert sum(kinds.values()) == pytest.approx(float(total.group(1)), abs=0.01 * len(kinds))
    # and the errors that say what to give it
    no_hlo = subprocess.run(roofline[:-1] + [f"--profile={tmp_path}"], capture_output=True, text=True, env=env)
    assert no_hlo.returncode == 2 and "--profile needs --hlo" in no_hlo.stderr
    empty = subprocess.run(roofline + ["--topology=h200", f"--profile={tmp_path / 'none'}"], capture_output=True,
                           text=True, env=env)
    assert empty.returncode == 2 and "no jax.profiler trace under" in empty.stderr
