"""Ahead-of-time compilation of the real train step for TPU pod slices (libtpu's compiler, no TPU) and fake
CPU devices: fits and memory per device, advice when it does not fit, FLOPs against the analytic count."""

import math
import os
import subprocess
import sys

import pytest

from configs import owt_medium, owt_small, tiny
from sedd_jax import compile as aot
from sedd_jax import flops
from tests.train_testing import REPO

pytest.importorskip("libtpu", reason='libtpu is missing: pip install -e ".[test]" installs it (jax[tpu])')


def _config(module, **overrides):
    c = module.get_config()
    for path, value in overrides.items():
        node = c
        *parents, leaf = path.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def _assert_fits(report, devices, hosts, mesh):
    assert report.fits, (report.memory, report.out_of_memory, report.advice)
    assert report.devices == devices and report.hosts == hosts and report.mesh == mesh
    m = report.memory
    assert 0 < m["temporaries"] and m["total"] <= report.hbm
    # The donated state is counted once: arguments (state + batch + key) ~ outputs ~ the sharded state.
    assert math.isclose(m["arguments"], report.state_bytes, rel_tol=0.01)
    assert m["total"] < m["arguments"] + m["outputs"] + m["temporaries"]


@pytest.mark.slow
def test_owt_small_fits_a_v5e_slice_with_data_and_fsdp():
    report = aot.aot_compile(_config(owt_small, training__accum=8, mesh__data=4, mesh__fsdp=4), "v5e:4x4")
    _assert_fits(report, 16, 4, {"data": 4, "fsdp": 4, "tensor": 1})
    assert report.hbm == 16 * 2**30 and report.device_kind == "TPU v5 lite"
    assert report.batch_size == 512 and report.length == 1024 and report.compute_dtype == "bfloat16"


@pytest.mark.slow
def test_owt_small_fits_a_v5e_slice_with_tensor_parallelism():
    report = aot.aot_compile(_config(owt_small, training__accum=8, mesh__data=2, mesh__fsdp=4, mesh__tensor=2),
                             "v5e:4x4")
    _assert_fits(report, 16, 4, {"data": 2, "fsdp": 4, "tensor": 2})


@pytest.mark.slow
def test_owt_small_fits_a_v5p_slice_as_configured():
    report = aot.aot_compile(owt_small.get_config(), "v5p:2x2x2")
    _assert_fits(report, 8, 2, {"data": 8, "fsdp": 1, "tensor": 1})
    assert report.hbm == 95 * 2**30 and report.accum == 1


@pytest.mark.slow
def test_owt_medium_fits_a_v5p_slice_with_fsdp_and_tensor():
    report = aot.aot_compile(_config(owt_medium, mesh__data=4, mesh__fsdp=2, mesh__tensor=2), "v5p:2x2x4")
    _assert_fits(report, 16, 4, {"data": 4, "fsdp": 2, "tensor": 2})
    assert report.accum == 2  # as configured


@pytest.mark.slow
def test_a_config_that_does_not_fit_is_told_what_to_change():
    report = aot.aot_compile(owt_small.get_config(), "v5e:4x4")   # 32 sequences of 1024 per 16 GiB chip
    assert not report.fits
    text = aot.format_text(report)
    assert "DOES NOT FIT" in text and "--config.training.accum=2" in text
    assert "--config.model.remat=full" in text and "--config.training.batch_size" in text
    row = aot.format_markdown(report)
    assert row.startswith("| ") and "| no |" in row


def test_xla_flops_per_token_match_the_analytic_count():
    for module in (owt_small, owt_medium):
        config = module.get_config()
        xla, analytic = aot.xla_flops_per_token(config), flops.train_flops_per_token(config, config.tokens + 1)
        assert 1.0 <= xla / analytic < 1.02, (module.__name__, xla, analytic)   # + elementwise work


@pytest.mark.slow
def test_compiled_tpu_program_counts_the_same_flops():
    # Unrolled, no recomputation, no accumulation: XLA's count of the compiled SPMD program (per device, all
    # devices together) is the count of the lowered probe that the reports use.
    config = _config(owt_small, model__n_blocks=2, model__scan_blocks=False, model__remat="none",
                     training__batch_size=8, mesh__fsdp=2)
    report = aot.aot_compile(config, "v5e:2x2")
    assert report.fits and report.devices == 4
    per_token = report.compiled_flops_per_device * report.devices / report.tokens_per_step
    assert abs(per_token / report.flops_per_token - 1) < 0.03, (per_token, report.flops_per_token)
    assert abs(per_token / report.analytic_flops_per_token - 1) < 0.05


def test_bad_topologies_are_explained():
    with pytest.raises(ValueError, match="not a TPU slice name or cpu:N; e.g. v4:2x2x2"):
        aot.aot_compile(tiny.get_config(), "tpu-16")
    with pytest.raises(ValueError, match="libtpu does not know the topology 'v9:4x4'"):
        aot.aot_compile(tiny.get_config(), "v9:4x4")
    with pytest.raises(ValueError, match="needs 64 CPU devices and jax has 1; set XLA_FLAGS"):
        aot.aot_compile(tiny.get_config(), "cpu:64")
    with pytest.raises(ValueError, match="3 devices, but 16 are available"):
        aot.aot_compile(_config(tiny, mesh__data=3), "v5e:4x4")


def test_command_line_on_fake_cpu_devices():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run([sys.executable, "-m", "sedd_jax.compile", f"--config={REPO}/configs/tiny.py",
                           "--topology=cpu:4", "--config.mesh.fsdp=2", "--config.training.n_iters=7"],
                          capture_output=True, text=True, env=dict(env, PYTHONPATH=REPO), cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("tiny mesh.fsdp=2 training.n_iters=7 on cpu:4: 4 x cpu on 1 host(s); "
                          "mesh data=2 x fsdp=2 x tensor=1"), out
    assert "batch 32 x length 128 (4,096 tokens per step), accum 1, float32" in out
    assert "memory per device: arguments" in out and out.rstrip().endswith("fits")
    bad = subprocess.run([sys.executable, "-m", "sedd_jax.compile", f"--config={REPO}/configs/tiny.py",
                          "--topology=v5e"], capture_output=True, text=True, env=dict(env, PYTHONPATH=REPO),
                         cwd=REPO, timeout=300)
    assert bad.returncode == 1 and "error: --topology='v5e' is not a TPU slice name" in bad.stderr
    assert "Traceback" not in bad.stderr
