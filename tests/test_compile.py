"""Ahead-of-time compilation of the real train step for TPU pod slices (libtpu's compiler, no TPU) and fake
CPU devices: fits and memory per device, advice when it does not fit, FLOPs against the analytic count."""

import dataclasses
import os
import subprocess
import sys
import types

import pytest

from configs import owt_medium, owt_small, tiny
from sedd_jax import compile as aot
from sedd_jax import flops
from tests.compile_testing import config_with as _config
from tests.train_testing import REPO

pytest.importorskip("libtpu", reason='libtpu is missing: pip install -e ".[test]" installs it (jax[tpu])')


def test_a_config_that_does_not_fit_is_told_what_to_change():
    # A one-block model of the shipped vocabulary, 1024 sequences of 64 per 16 GiB v5e chip, with the whole
    # network's loss (its [B, L, V] logits; the masked-positions loss makes them 1/16 as large and fits): libtpu's
    # compiler refuses it (about 18.7 GiB of temporaries), quickly. The advice is the first accumulation that
    # compiles within HBM, with its compiled total.
    config = _config(owt_small, model__n_blocks=1, model__hidden_size=64, model__n_heads=2, model__cond_dim=32,
                     model__length=64, training__batch_size=4096, training__masked_positions_only=False)
    report = aot.aot_compile(config, "v5e:2x2")
    assert not report.fits and report.memory is None and report.out_of_memory.startswith("RESOURCE_EXHAUSTED")
    assert report.hbm == 16 * 2**30 and report.device_kind == "TPU v5 lite" and report.mesh["data"] == 4
    text = aot.format_text(report)
    assert "DOES NOT FIT" in text and "--config.model.remat=full" in text and "--config.training.batch_size" in text
    assert ("--config.training.accum=2 (micro-batches of 512 sequences per device instead of 1024; compiled: "
            "total " in text), text
    assert "~" not in text
    row = aot.format_markdown(report)
    assert row.startswith("| ") and "| refused: temporaries " in row and "| no |" in row, row


def _small(**overrides):
    """A one-block model that compiles in seconds on one CPU device (batch 16 x 64)."""
    return _config(tiny, model__n_blocks=1, model__hidden_size=32, model__n_heads=2, model__cond_dim=16,
                   model__length=64, training__batch_size=16, **overrides)


def test_advice_names_the_first_accumulation_that_compiles_within_hbm(monkeypatch):
    # CPUs have no HBM limit; give the device exactly what the step needs with accum=4.
    needed = aot.aot_compile(_small(training__accum=4), "cpu:1").memory["total"]
    monkeypatch.setattr(aot, "hbm_per_device", lambda devices: needed)
    report = aot.aot_compile(_small(), "cpu:1")
    assert not report.fits and report.memory["total"] > needed
    tip = next(t for t in report.advice if t.startswith("accumulate"))
    assert tip.startswith(f"accumulate: --config.training.accum=4 (micro-batches of 4 sequences per device instead "
                          f"of 16; compiled: total {aot._gib(needed)} of {aot._gib(needed)}; accum=2 needs total "), tip
    # what accum=2 needs was compiled too, and is more than the device has
    accum2 = float(tip.split("accum=2 needs total ")[1].split(" MiB")[0]) * 2**20
    assert accum2 > needed and "~" not in tip


def _report_that_does_not_fit(per_device=32, **fields):
    """A report of owt_small-like figures on v5e:4x4 (16 data-parallel devices) that does not fit."""
    report = aot.CompileReport(
        config_name="c", topology="v5e:4x4", device_kind="TPU v5 lite", devices=16, hosts=4,
        mesh={"data": 16, "fsdp": 1, "tensor": 1}, batch_size=16 * per_device, accum=1, length=1024,
        compute_dtype="bfloat16", remat="dots_no_batch", hbm=16 * 2**30, state_bytes=2 * 2**30, memory=None,
        fits=False, flops_per_token=1.0, analytic_flops_per_token=1.0)
    return dataclasses.replace(report, **fields)


def _fake_compiles(monkeypatch, fits_from=None) -> list:
    """Replaces the verification compiles: accumulations >= `fits_from` fit (none when None), each needing
    "total <accum> GiB". Returns the list of accumulations compiled."""
    compiled = []

    def fake_compile(report, config, accum):
        compiled.append(accum)
        return fits_from is not None and accum >= fits_from, f"total {accum} GiB"

    monkeypatch.setattr(aot, "_compile_with_accum", fake_compile)
    return compiled


def test_advice_compiles_accumulations_smallest_first(monkeypatch):
    compiled = _fake_compiles(monkeypatch, fits_from=8)
    tips = aot.advice(_report_that_does_not_fit(), tiny.get_config())
    assert compiled == [2, 4, 8]
    assert tips[0] == ("accumulate: --config.training.accum=8 (micro-batches of 4 sequences per device instead of "
                       "32; compiled: total 8 GiB of 16.00 GiB; accum=2 needs total 2 GiB, accum=4 needs total 4 GiB)")
    # 12 per device: 2 and 4 divide it, then one sequence per device; an accumulation in place is multiplied
    compiled = _fake_compiles(monkeypatch, fits_from=24)
    tips = aot.advice(_report_that_does_not_fit(per_device=12, accum=2, batch_size=2 * 16 * 12), tiny.get_config())
    assert compiled == [4, 8, 24] and tips[0].startswith("accumulate: --config.training.accum=24 (micro-batches of 1 ")


def test_advice_when_no_accumulation_fits_or_none_can_be_compiled(monkeypatch):
    compiled = _fake_compiles(monkeypatch, fits_from=None)
    tips = aot.advice(_report_that_does_not_fit(), tiny.get_config())
    assert compiled == [2, 4, 8, 16, 32]
    assert tips[0] == ("accumulation alone does not fit (accum=2 needs total 2 GiB; accum=4 needs total 4 GiB; "
                       "accum=8 needs total 8 GiB; accum=16 needs total 16 GiB; accum=32 needs total 32 GiB of "
                       "16.00 GiB): combine it with the changes below")
    assert tips[1] == "recompute more in the backward pass: --config.model.remat=full (now dots_no_batch)"
    # Without the config nothing is compiled, and no accumulation value or memory figure is named.
    compiled.clear()
    tips = aot.advice(_report_that_does_not_fit())
    assert compiled == [] and "--config.training.accum=" not in " ".join(tips)
    assert tips[0].startswith("accumulate: a larger --config.training.accum (now 1, micro-batches of 32 sequences")
    # A train state larger than the device: shard it; accumulation cannot help and is not compiled.
    tips = aot.advice(_report_that_does_not_fit(state_bytes=20 * 2**30), tiny.get_config())
    assert compiled == [] and tips[0].startswith("the train state alone takes 20.00 GiB per device: shard it")
    assert not any("accum" in t for t in tips)


def test_xla_flops_per_token_match_the_analytic_count():
    for module in (owt_small, owt_medium):
        config = module.get_config()
        xla, analytic = aot.xla_flops_per_token(config), flops.train_flops_per_token(config, config.tokens + 1)
        assert 1.0 <= xla / analytic < 1.02, (module.__name__, xla, analytic)   # + elementwise work


def test_compiled_tpu_program_counts_the_same_flops():
    # Unrolled, no recomputation, no accumulation, the whole network's loss (the masked-positions loss's chunk loop
    # would count once): XLA's count of the compiled SPMD program (per device, all devices together) is the count
    # of the lowered probe that the reports use.
    # (Length 128: the compiler's time grows with the length; 1024 took twice as long for the same check.)
    config = _config(owt_small, model__n_blocks=2, model__scan_blocks=False, model__remat="none",
                     training__batch_size=8, mesh__fsdp=2, model__length=128, training__masked_positions_only=False)
    report = aot.aot_compile(config, "v5e:2x2")
    assert report.fits and report.devices == 4
    per_token = report.compiled_flops_per_device * report.devices / report.tokens_per_step
    assert abs(per_token / report.flops_per_token - 1) < 0.03, (per_token, report.flops_per_token)
    assert abs(per_token / report.analytic_flops_per_token - 1) < 0.05


def test_bad_topologies_are_explained():
    with pytest.raises(ValueError, match=r"not a TPU slice, a GPU \(a100, h100, h200\) or cpu:N; e.g. v4:2x2x2"):
        aot.aot_compile(tiny.get_config(), "tpu-16")
    with pytest.raises(ValueError, match="'h300' is not a TPU slice, a GPU"):
        aot.aot_compile(tiny.get_config(), "h300")
    with pytest.raises(ValueError, match="libtpu does not know the topology 'v9:4x4'"):
        aot.aot_compile(tiny.get_config(), "v9:4x4")
    with pytest.raises(ValueError, match="needs 64 CPU devices and jax has 1; set XLA_FLAGS"):
        aot.aot_compile(tiny.get_config(), "cpu:64")
    with pytest.raises(ValueError, match="3 devices, but 16 are available"):
        aot.aot_compile(_config(tiny, mesh__data=3), "v5e:4x4")


def test_gpu_topologies_are_explained(monkeypatch):
    with pytest.raises(ValueError, match=r"h100:0 names no devices; e.g. h100:8 \(8 GPUs on one host\)"):
        aot.topology_devices("h100:0")
    with pytest.raises(ValueError, match="h200:0x8 names no devices"):
        aot.topology_devices("h200:0x8")
    monkeypatch.setattr(aot, "_has_cuda_plugin", lambda: False)
    with pytest.raises(ValueError, match=r"compiling for a100 GPUs needs JAX's CUDA plugin: pip install -U "
                                         r'"jax\[cuda12\]"'):
        aot.topology_devices("a100:2x8")


def test_gpu_memory_is_jax_share_of_each_chip(monkeypatch):
    h200 = [types.SimpleNamespace(device_kind="NVIDIA H200")] * 8
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    assert aot.hbm_per_device(h200) == 143771 * 2**20 * 0.75   # JAX preallocates 75% by default
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", ".9")
    assert aot.hbm_per_device(h200) == 143771 * 2**20 * 0.9
    for bad, message in (("most", "is not a number"), ("1.5", r"is not in \(0, 1\]")):
        monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", bad)
        with pytest.raises(ValueError, match=f"XLA_PYTHON_CLIENT_MEM_FRACTION=.*{message}"):
            aot.hbm_per_device(h200)
    assert aot.hbm_per_device([types.SimpleNamespace(device_kind="cpu")]) is None


@pytest.mark.parametrize("name", sorted(aot.GPU_TARGETS))
def test_gpu_target_configs_describe_each_chip(name):
    target = aot.GPU_TARGETS[name]
    text = aot.gpu_target_config(target)
    major, minor = target.compute_capability
    for line in (f"core_count: {target.cores}", f"device_memory_size: {target.memory_mib * 2**20}",
                 f"cuda_compute_capability {{ major: {major} minor: {minor} }}", 'platform_name: "CUDA"',
                 f'device_description_str: "{target.device_kind}"'):
        assert line in text, line
    assert text.count("{") == text.count("}")
    # its device kind has a peak in sedd_jax.flops, so the benchmarks' MFU names it
    assert flops.peak_flops(target.device_kind, "bfloat16") > 1e14


def test_command_line_on_fake_cpu_devices():
    # absl reads `--topology cpu:4` like `--topology=cpu:4`; the fake CPU devices are set up for either (both
    # spellings: test_topology_is_read_from_the_command_line_as_absl_reads_it).
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run([sys.executable, "-m", "sedd_jax.compile", f"--config={REPO}/configs/tiny.py",
                           "--topology", "cpu:4", "--config.mesh.fsdp=2", "--config.training.n_iters=7"],
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
    assert bad.returncode == 1 and "error: --topology='v5e' is not a TPU slice, a GPU" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("argv, value", [
    (["--topology=cpu:4"], "cpu:4"), (["--topology", "cpu:4"], "cpu:4"), (["-topology", "cpu:3"], "cpu:3"),
    (["-topology=cpu:3"], "cpu:3"), (["--topology=cpu:2", "--format", "json", "--topology", "cpu:8"], "cpu:8"),
    (["--topology"], None), (["--", "--topology=cpu:4"], None), (["--topologies=cpu:4"], None), ([], None),
])
def test_topology_is_read_from_the_command_line_as_absl_reads_it(argv, value, monkeypatch):
    assert aot._flag_value(["sedd-compile"] + argv, "topology") == value
    monkeypatch.setenv("XLA_FLAGS", "")   # recorded, so the test leaves XLA_FLAGS as it found it
    monkeypatch.delenv("XLA_FLAGS")
    aot._prepare_environment(["sedd-compile"] + argv)
    expected = f"--xla_force_host_platform_device_count={value[4:]}" if value else None
    assert os.environ.get("XLA_FLAGS") == expected
