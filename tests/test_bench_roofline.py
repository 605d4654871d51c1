"""bench/roofline.py's reading of compiled programs (here XLA's CPU programs, whose text has the same form as the
GPU's): products and their trip counts, slices of stacked buffers, the roofline sum."""

import gzip
import json
import os
import re
import sys

import jax
import jax.numpy as jnp
import pytest

from tests.train_testing import REPO

sys.path.insert(0, os.path.join(REPO, "bench"))
import roofline  # noqa: E402  (bench/ is not a package)

PRODUCT_FLOPS = 2 * 64 * 32 * 32  # [64, 32] x [32, 32]


def _compiled_text(fn, *args) -> str:
    return jax.jit(fn).lower(*args).compile().as_text()


def test_products_are_counted_with_their_loops_trip_counts():
    def fn(x, w, n):
        x = jax.lax.fori_loop(0, 5, lambda i, x: jnp.tanh(x @ w), x)      # known trip count
        return jax.lax.fori_loop(0, n, lambda i, x: x @ w, x)              # unknown: counted as told

    kernels = roofline.kernels(_compiled_text(fn, jnp.ones((64, 32)), jnp.ones((32, 32)), 3), unknown_trip_count=7)
    products = [k for k in kernels if k.flops]
    assert all(k.kind == "gemm" and k.flops == PRODUCT_FLOPS for k in products)
    assert sorted(k.count for k in products) == [5, 7]
    assert any(k.loops.endswith("x5") for k in products)
    assert any("x7 (unknown" in k.loops for k in products)
    assert all(k.bytes == (2 * 64 * 32 + 32 * 32) * 4 for k in products)  # [64, 32] in and out, [32, 32] in


def test_a_loop_reading_a_stacked_buffer_counts_its_slices():
    xs = jnp.ones((10, 64, 32))
    scan = lambda xs, w: jax.lax.scan(lambda c, x: (c + jnp.sin(x) @ w, None), jnp.zeros((64, 32)), xs)[0]
    kernels = roofline.kernels(_compiled_text(scan, xs, jnp.ones((32, 32))), unknown_trip_count=1)
    in_loop = [k for k in kernels if k.count == 10]
    assert sum(k.flops for k in in_loop) == PRODUCT_FLOPS
    slice_bytes, stack_bytes = 64 * 32 * 4, xs.size * 4
    assert max(k.bytes for k in in_loop) < stack_bytes  # each iteration reads its slice, not the stack
    assert sum(k.bytes for k in in_loop) >= slice_bytes


def test_a_scatter_in_place_counts_the_rows_it_updates():
    buffer, rows = jnp.zeros((4096, 32)), jnp.ones((64, 32))
    fn = lambda buffer, index, rows: jax.lax.fori_loop(0, 5, lambda i, b: b.at[index + i].add(jnp.sin(rows)), buffer)
    kernels = roofline.kernels(_compiled_text(fn, buffer, jnp.arange(64), rows), unknown_trip_count=1)
    (scatter,) = [k for k in kernels if k.count == 5 and "scatter" in k.name]
    assert scatter.bytes < buffer.size * 4  # not the whole buffer, read and written
    assert scatter.bytes >= 2 * rows.size * 4  # the rows added to, read and written (the updates' reads besides)


def test_an_allocated_buffer_costs_nothing():
    text = """HloModule m, entry_computation_layout={()->(f32[1024,1024]{1,0}, f32[1024,1024]{1,0})}

ENTRY %main () -> (f32[1024,1024], f32[1024,1024]) {
  %custom-call.1 = f32[1024,1024]{1,0} custom-call(), custom_call_target="AllocateBuffer"
  %custom-call.2 = f32[1024,1024]{1,0} custom-call(), custom_call_target="SomeKernel"
  ROOT %tuple.3 = (f32[1024,1024]{1,0}, f32[1024,1024]{1,0}) tuple(%custom-call.1, %custom-call.2)
}
"""
    (kernel,) = roofline.kernels(text, unknown_trip_count=1)  # XLA's uninitialised buffer (JAX's lax.empty on GPUs)
    assert kernel.kind == "SomeKernel" and kernel.bytes == 1024 * 1024 * 4


def test_roofline_time_is_the_slower_of_compute_and_memory():
    kernel = roofline.Kernel("gemm", "%k", "f32[8]", "", count=3, bytes=4e6, flops=1e9, op_name="")
    assert roofline.roofline_seconds(kernel, peak=1e12, bandwidth=1e9) == pytest.approx(3 * 4e-3)  # memory-bound
    assert roofline.roofline_seconds(kernel, peak=1e11, bandwidth=1e12) == pytest.approx(3 * 1e-2)  # compute-bound
    assert roofline.roofline_seconds(kernel, peak=1e12, bandwidth=1e9, floor=5e-3) == pytest.approx(3 * 5e-3)
    assert roofline.roofline_seconds(kernel, peak=1e12, bandwidth=1e9, floor=1e-3) == pytest.approx(3 * 4e-3)
    assert roofline.array_bytes("(bf16[2,3]{1,0}, f32[4]{0}, s32[])") == 2 * 6 + 4 * 4 + 4


def test_a_saved_program_is_read_without_compiling(tmp_path, monkeypatch, capsys):
    big = jax.ShapeDtypeStruct((4096, 4096), jnp.float32)  # 0.69 ms of products at the H200's peak: printed
    text = _compiled_text(lambda x, w: jax.lax.fori_loop(0, 5, lambda i, x: jnp.tanh(x @ w), x), big, big)
    saved = tmp_path / "step.hlo"
    saved.write_text(text)
    flags = ["--size=tiny", "--compute_dtype=bfloat16", "--topology=h200"]
    monkeypatch.setattr(sys, "argv", ["roofline.py", *flags, f"--hlo={saved}"])
    roofline.main()
    printed = capsys.readouterr().out
    assert f"program read from {saved}" in printed
    expected = sum(roofline.roofline_seconds(k, 989e12, 4.8e12) for k in roofline.kernels(text, 9))
    assert expected > 5e-4
    printed_ms = float(re.search(r"at the roofline: ([\d.]+) ms", printed).group(1))
    assert printed_ms == pytest.approx(expected * 1e3, abs=0.006)
    found = roofline.kernels(text, 9)
    floored = sum(roofline.roofline_seconds(k, 989e12, 4.8e12, 2e-6) for k in found)
    assert floored > expected  # the loop's small kernels take 2 us each
    line = re.search(r"([\d,]+) kernel runs per step, ([\d,]+) of them under 2 us at the roofline; with 2 us as "
                     r"the least a kernel run takes \(--kernel_floor_us\): ([\d.]+) ms", printed)
    assert line, printed
    assert int(line.group(1).replace(",", "")) == sum(k.count for k in found)
    assert 0 < int(line.group(2).replace(",", "")) < int(line.group(1).replace(",", ""))
    assert float(line.group(3)) == pytest.approx(floored * 1e3, abs=0.006)

    saved.write_text("not a program")
    with pytest.raises(SystemExit):
        roofline.main()
    assert "holds no HLO program" in capsys.readouterr().err


def test_measured_kernel_times_come_from_the_device_streams_of_the_newest_trace(tmp_path):
    """A GPU's trace in the form `jax.profiler` writes it (written here): kernel events on the device's streams
    name their HLO instruction; the profiler's derived "XLA Ops" line repeats them and the host's launch events
    name them too, and neither is counted; other modules' kernels are not either."""
    def trace(folder, events):
        path = tmp_path / "plugins" / "profile" / folder / "host.trace.json.gz"
        path.parent.mkdir(parents=True)
        with gzip.open(path, "wt") as f:
            json.dump({"traceEvents": events}, f)

    def meta(kind, pid, name, tid=None):
        return {"ph": "M", "name": kind, "pid": pid, **({"tid": tid} if tid is not None else {}), "args": {"name": name}}

    def kernel(pid, tid, op, us, module="jit_train_step"):
        return {"ph": "X", "pid": pid, "tid": tid, "ts": 0, "dur": us, "name": op + "_kernel",
                "args": {"hlo_op": op, "hlo_module": module}}

    trace("2026_01_01_00_00_00", [meta("process_name", 1, "/host:CPU"), kernel(1, 1, "fusion.1", 1e6)])  # older
    trace("2026_01_02_00_00_00", [
        meta("process_name", 1, "/host:CPU"), meta("process_name", 2, "/device:GPU:0"),
        meta("thread_name", 2, "Stream #13(Compute)", tid=13), meta("thread_name", 2, "XLA Ops", tid=100),
        *({"ph": "X", "pid": 1, "tid": 1, "ts": 0, "dur": 9, "name": "train", "args": {"step_num": str(n)}}
          for n in (4, 5)),
        kernel(1, 1, "fusion.1", 50.0),                                       # the host's launch: not counted
        kernel(2, 13, "fusion.1", 30.0), kernel(2, 13, "fusion.1", 10.0),      # two runs of one kernel
        kernel(2, 13, "custom-call.2", 5.0), kernel(2, 13, "custom-call.2", 7.0),  # one call, two kernels
        kernel(2, 100, "fusion.1", 40.0),                                     # derived: not counted
        kernel(2, 13, "fusion.9", 99.0, module="jit_sample"),                 # another program
    ])
    measured, steps = roofline.measured_seconds(str(tmp_path), "jit_train_step")
    assert steps == 2
    assert measured == pytest.approx({"fusion.1": 40e-6, "custom-call.2": 12e-6})

    with pytest.raises(ValueError, match="no jax.profiler trace under"):
        roofline.measured_seconds(str(tmp_path / "elsewhere"), "jit_train_step")
