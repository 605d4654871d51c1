"""bench/train_step.py as a GPU run would use it: the first step's figures (to compare two programs) and a profile
of 3 more steps."""

import os
import re
import subprocess
import sys

from tests.train_testing import REPO, profiled_steps


def test_prints_the_first_step_and_profiles_three_more(tmp_path):
    command = [sys.executable, os.path.join(REPO, "bench", "train_step.py"), "--size=tiny", "--tokens=64",
               "--length=32", "--batch_size=2", "--steps=1", f"--profile_dir={tmp_path}"]
    runs = [subprocess.run(command, capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, JAX_PLATFORMS="cpu")) for _ in range(2)]
    assert all(run.returncode == 0 for run in runs), runs[0].stderr[-3000:]
    first = [re.search(r"first step: loss ([\d.]+) nats/token, gradient norm ([\d.]+)", run.stdout) for run in runs]
    assert all(first) and first[0].groups() == first[1].groups()  # the same state, batch and key every run
    assert float(first[0].group(1)) > 0 and float(first[0].group(2)) > 0
    traced = profiled_steps(tmp_path)
    assert traced and traced[-1] == [1, 2, 3]
    assert f"profile of 3 steps written to {tmp_path}/plugins/profile/" in runs[0].stdout
