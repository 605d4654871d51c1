"""Training speed: median train-step time, tokens/s, memory, compile time and (on GPU/TPU) MFU.

    python bench/train_step.py [--size=bench|tiny|small|medium] [--length=256] [--batch_size=8]
        [--compute_dtype=float32|bfloat16] [--attention=plain|fused] [--scan_blocks=0|1] [--remat=...]
        [--masked_positions_only=0|1] [--steps=20] [--compilation_cache=DIR] [--profile_dir=DIR] [--save_hlo=FILE]

It also prints XLA's rate on one product of the step's shapes (the MLP's input), as bench/torch_reference.py
prints torch's: a ratio between the two steps depends on their libraries' kernels on the machine (bench/README.md).
Defaults reproduce issue 8's side-by-side configuration (tokens 1000 absorb, hidden 256, 4 heads, 4 blocks,
cond 128, length 256, batch 8, dropout 0.1, float32, AdamW + EMA). The step is the trainer's own
(`sedd_jax.train_step.compile_train_step`: sharded over all devices, state donated). MFU uses the analytic matmul
FLOPs of `sedd_jax.flops` (bidirectional attention, forward + backward, recomputation not counted) and the
chip's data-sheet peak; those are the whole network's, so with the absorbing graph's default
(`training.masked_positions_only`, the last layers at masked positions only) the step does fewer and MFU
counts work it skipped: `--masked_positions_only=0` measures the hardware's use. Figures are printed, never
asserted. `--profile_dir=DIR` then traces 3 more steps with `jax.profiler` into DIR/plugins/profile/ (TensorBoard's
Profile tab; on a GPU the measured time of every kernel, to set against bench/roofline.py's estimate).
`--save_hlo=FILE` writes the compiled step's program text (on a GPU the autotuned one), which `bench/roofline.py
--hlo=FILE` reads.
"""

from __future__ import annotations

import argparse
import resource
import time

import common  # first: puts the repository on sys.path
import jax
import numpy as np

from sedd_jax import compilation_cache, flops, host_memory, parallel, train_state, train_step


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_model_flags(p)
    p.add_argument("--steps", type=int, default=20, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--compilation_cache", default="",
                   help="persistent compilation cache directory, as sedd-train's flag (default: off; a second run "
                        "with the same directory loads the step instead of compiling it)")
    p.add_argument("--profile_dir", default="", help="trace 3 more steps (untimed) into this directory")
    p.add_argument("--save_hlo", default="", help="write the compiled step's program text to this file")
    args = p.parse_args()
    host_memory.run_cpu_programs_inline()  # as sedd-train: a CPU step reuses the memory of the previous one
    compilation_cache.enable(args.compilation_cache)
    config = common.config_from_flags(args)
    print(common.describe(config))
    print(common.device_line())

    mesh = parallel.create_mesh(config)
    graph, _, model, optimizer, loss_fn = train_step.training_components(config)

    started = time.perf_counter()
    init_state, abstract_state, shardings = train_state.train_state_layout(config, model, optimizer, mesh,
                                                                     jax.random.key(0))
    step = train_step.compile_train_step(config, model, loss_fn, optimizer, mesh, abstract_state, shardings)
    compile_s = time.perf_counter() - started
    if args.save_hlo:
        common.save_program(step.as_text(), args.save_hlo)
    state = jax.jit(init_state, out_shardings=shardings)(jax.random.key(0))
    n_params = sum(x.size for x in jax.tree.leaves(state.params))

    b, length = config.training.batch_size, config.model.length
    rng = np.random.default_rng(0)
    batch = jax.device_put(rng.integers(0, config.tokens, (b, length), dtype=np.int32), parallel.batch_sharding(mesh))
    key = jax.random.key(1)

    def one_step():
        nonlocal state
        state, metrics = step(state, batch, key)
        return metrics

    host_memory.reuse_freed_memory()  # as the trainer does on CPUs for its runs of train steps
    first = jax.device_get(one_step())  # the same state, batch and key every run: comparable across programs
    print(f"first step: loss {first['train_loss']:.6f} nats/token, gradient norm {first['grad_norm']:.6f}")
    hidden, rows = config.model.hidden_size, b * length // jax.device_count()
    print(common.product_rate_line(rows, hidden, 4 * hidden, config.model.compute_dtype))  # the MLP's input product
    common.time_calls(one_step, 1)
    cpu_started, faults_started = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = common.time_calls(one_step, args.steps)
    cpu_seconds = time.process_time() - cpu_started  # all of the process's threads
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_started
    t = common.median(times)
    tokens_per_s = b * length / t
    print(f"parameters {n_params:,}; compile {compile_s:.1f} s"
          + (f"; program written to {args.save_hlo}" if args.save_hlo else ""))
    print(common.compiled_memory_line(step))
    print(f"train step median {t * 1e3:.1f} ms (min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}, "
          f"{args.steps} steps) | {tokens_per_s:,.0f} tokens/s | {common.peak_memory_line()}")
    print(f"process CPU time {cpu_seconds / args.steps * 1e3:.1f} ms per step (mean; "
          f"{cpu_seconds / sum(times):.2f} cores busy on average) | {faults / args.steps:,.0f} minor page faults per "
          "step (on CPUs a step's temporaries are fresh memory unless it reuses the previous step's: bench/README.md)")
    per_token = flops.train_flops_per_token(config, graph.dim)
    achieved = per_token * tokens_per_s / jax.device_count()
    utilisation = flops.mfu(achieved, jax.devices()[0].device_kind, config.model.compute_dtype)
    print(f"analytic train FLOPs {per_token / 1e6:.1f} MFLOP/token -> {achieved / 1e12:.2f} TFLOP/s per chip"
          + (f" | MFU {100 * utilisation:.1f}%" if utilisation is not None else " | MFU: peak unknown for this chip"))
    if args.profile_dir:
        with jax.profiler.trace(args.profile_dir):
            for number in range(1, 4):
                with jax.profiler.StepTraceAnnotation("train", step_num=number):
                    metrics = one_step()
            jax.block_until_ready(metrics)
        print(f"profile of 3 steps written to {args.profile_dir}/plugins/profile/")


if __name__ == "__main__":
    main()
