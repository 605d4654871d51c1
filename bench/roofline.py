"""Where a GPU train step's time would go, from its compiled program: each kernel's bytes and FLOPs against the chip's
memory bandwidth and peak, summed with the loops' trip counts (a roofline estimate, not a measurement).

    python bench/roofline.py [model flags of bench/train_step.py] [--topology=h200|h100|a100|local]
        [--chunk_runs=9] [--top=25] [--kernel_floor_us=2] [--save_hlo=FILE | --hlo=FILE [--profile=DIR]]

`--topology=h200` (the default) compiles the trainer's own step for a described H200 on any machine with JAX's
CUDA plugin (`sedd_jax.compile`; no GPU needed, GEMM kernels not autotuned); `--topology=local` compiles it for
this machine's first device, autotuned, for comparison with `bench/train_step.py`'s measured time there. Every
kernel of the program (fusions, GEMMs, cuDNN calls, copies; loop bodies times their trip counts) is charged
max(FLOPs / peak, bytes / bandwidth), its bytes being what it reads and writes: a fusion's operands and results,
except that an operand read only through dynamic slices counts the slices and a buffer updated in place counts
the update. The sum bounds the step's time from below (kernels at the chip's data-sheet limits, one at a time),
so the model-FLOPs utilisation it implies bounds MFU from above. Loops without a known trip count (the absorbing
loss's chunk loop, which runs as many of its chunks as the most-masked data shard needs: about 9 of 16 with
half the positions masked) count `--chunk_runs` iterations. A second estimate takes every kernel run to need at
least `--kernel_floor_us` (2 us: launching and ramping up a small kernel), for steps of many small kernels (an
optimizer's per-parameter updates and norms). Figures are printed, never asserted.

`--save_hlo=FILE` writes the compiled program's text (as does `bench/train_step.py --save_hlo`); `--hlo=FILE` reads
such a file instead of compiling (no CUDA plugin needed), with the chip named by `--topology` (`local`: this
machine's GPU) and the model flags the program was compiled with (for its model FLOPs). So the autotuned program of
a GPU (`bench/accelerator.sh` saves it) can be read again anywhere. With `--profile=DIR`, a `jax.profiler` trace of
the same program's steps (`bench/train_step.py --profile_dir=DIR --save_hlo=FILE` writes both), each kernel's measured
time is set against its estimate: in all, by kind, and the kernels furthest from it.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gzip
import json
import pathlib
import re

import common  # first: puts the repository on sys.path

BYTES_PER_ELEMENT = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4,
                     "u32": 4, "f64": 8, "s64": 8, "u64": 8}
_INSTRUCTION = re.compile(r"^\s+(ROOT )?(%[\w.\-]+) = (\(.*?\)|\S+) ([\w\-]+)\((.*?)\)(, .*)?$", re.M)
_ARRAY = re.compile(r"([a-z]+\d*)\[([0-9,]*)\]")
_FREE = {"get-tuple-element", "bitcast", "tuple", "constant", "parameter", "after-all", "partition-id", "replica-id"}
_FREE_CUSTOM_CALLS = {"AllocateBuffer"}  # a buffer allocated, not written
# lines of a device's trace that the profiler derives from its kernels (each op or step once more)
_DERIVED_LINES = {"XLA Ops", "XLA Modules", "XLA TraceMe", "Steps", "Framework Ops", "Framework Name Scope",
                  "TensorFlow Ops", "TensorFlow Name Scope", "Launch Stats", "Source code"}


@dataclasses.dataclass
class Instruction:
    name: str
    shape: str            # result type, e.g. "bf16[32,1024]{1,0}" or a tuple "(f32[8]{0}, s32[])"
    opcode: str
    operands: list[str]   # operand instruction names
    attributes: str       # everything after the operand list
    root: bool


@dataclasses.dataclass
class Kernel:
    kind: str             # "gemm", "fusion:<kind>", or the custom call's target / the opcode
    name: str
    shape: str
    loops: str            # the enclosing loops, outermost first, with their trip counts
    count: int            # how many times the step runs it (loop trip counts multiplied)
    bytes: int            # read and written per run
    flops: float          # per run (products only)
    op_name: str


def array_bytes(shape: str) -> int:
    """Bytes of the arrays in an HLO type ("f32[2,3]{1,0}", or a tuple of them)."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        total += BYTES_PER_ELEMENT.get(dtype, 4) * _product(dims)
    return total


def _product(dims: str) -> int:
    n = 1
    for d in dims.split(","):
        if d:
            n *= int(d)
    return n


def _dims(shape: str) -> list[int]:
    return [int(d) for d in _ARRAY.search(shape).group(2).split(",") if d]


def parse(text: str) -> tuple[dict[str, list[Instruction]], str, dict[str, str]]:
    """A compiled module's text -> (instructions of each computation, the entry computation's name, the result
    type of every instruction by name)."""
    computations, entry, shapes = {}, None, {}
    for block in re.split(r"\n(?=%|ENTRY )", text):
        head = re.match(r"(ENTRY )?(%[\w.\-]+)", block)
        if not head:
            continue
        instructions = []
        for m in _INSTRUCTION.finditer(block):
            operands = [a.strip().split(" ")[-1] for a in _split_operands(m.group(5))]
            instructions.append(Instruction(m.group(2), m.group(3), m.group(4), operands, m.group(6) or "",
                                            bool(m.group(1))))
            shapes[m.group(2)] = m.group(3)
        computations[head.group(2)] = instructions
        if head.group(1):
            entry = head.group(2)
    return computations, entry, shapes


def _split_operands(text: str) -> list[str]:
    """Top-level comma-separated operands (operand types may hold commas inside brackets and braces)."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [p for p in parts + [current] if p.strip()]


def _called(instruction: Instruction, key: str) -> str | None:
    m = re.search(key + r"=(%[\w.\-]+)", instruction.attributes)
    return m.group(1) if m else None


def dot_flops(ins: Instruction, shapes: dict[str, str]) -> float:
    """2 x output elements x contracted size of a dot."""
    contracting = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", ins.attributes)
    lhs = _dims(shapes[ins.operands[0]])
    k = 1
    for axis in contracting.group(1).split(",") if contracting and contracting.group(1) else []:
        k *= lhs[int(axis)]
    return 2 * _product(_ARRAY.search(ins.shape).group(2)) * k


def products_in(computations, shapes, computation: str) -> float:
    """FLOPs of the dots in a computation and the fusions it calls."""
    total = 0.0
    for ins in computations[computation]:
        if ins.opcode == "dot":
            total += dot_flops(ins, shapes)
        elif ins.opcode == "fusion":
            total += products_in(computations, shapes, _called(ins, "calls"))
    return total


def fusion_bytes(computations, shapes, fusion: Instruction) -> int:
    """Bytes a fusion reads and writes: every operand and result in full, except an operand read only through
    dynamic slices (the slices count) and a buffer that a dynamic-update-slice or scatter result updates in place
    (the update counts; a scatter's twice: it reads the elements it adds to)."""
    body = computations[_called(fusion, "calls")]
    by_name = {i.name: i for i in body}
    roots = [i for i in body if i.root]
    if roots and roots[0].opcode == "tuple":
        roots = [by_name[n] for n in roots[0].operands if n in by_name]
    in_place, total = set(), 0
    for root in roots:
        if root.opcode == "dynamic-update-slice":
            in_place.add(root.operands[0])
            total += array_bytes(by_name[root.operands[1]].shape if root.operands[1] in by_name else root.shape)
        elif root.opcode == "scatter" and len(root.operands) == 3:  # (operand, indices, updates)
            in_place.add(root.operands[0])
            total += 2 * array_bytes(by_name[root.operands[2]].shape if root.operands[2] in by_name else root.shape)
        else:
            total += array_bytes(root.shape)
    uses = collections.defaultdict(list)
    for ins in body:
        for position, operand in enumerate(ins.operands):
            uses[operand].append((ins, position))
    for ins in body:
        if ins.opcode != "parameter" or ins.name in in_place:
            continue
        reads = uses[ins.name]
        if reads and all(user.opcode == "dynamic-slice" and position == 0 for user, position in reads):
            total += sum(array_bytes(user.shape) for user, _ in reads)
        else:
            total += array_bytes(ins.shape)
    return total


def attention_flops(target: str, shape: str) -> float:
    """cuDNN flash attention's matmul FLOPs from its first result (the output, logically [B, H, L, D] for the
    forward; dQ for the backward): forward 2 products (4 B H L^2 D), backward 5 (S recomputed, dP, dV, dQ, dK)."""
    b, h, length, d = _dims(shape)[:4]
    per_product = 2 * b * h * length * length * d
    return (5 if target.endswith("Backward") else 2) * per_product


def kernels(text: str, unknown_trip_count: int) -> list[Kernel]:
    """Every kernel the program runs, with its run count, bytes and FLOPs."""
    computations, entry, shapes = parse(text)
    found = []

    def walk(computation: str, count: int, loops: str):
        for ins in computations[computation]:
            op_name = re.search(r'op_name="([^"]*)"', ins.attributes)
            op_name = op_name.group(1) if op_name else ""
            if ins.opcode in _FREE:
                continue
            if ins.opcode == "while":
                trips = re.search(r'known_trip_count":\{"n":"(\d+)"', ins.attributes)
                n = int(trips.group(1)) if trips else unknown_trip_count
                label = f"{ins.name} x{n}" + ("" if trips else " (unknown: --chunk_runs)")
                walk(_called(ins, "body"), count * n, f"{loops} > {label}" if loops else label)
                continue
            if ins.opcode in ("call", "conditional", "async-start"):
                for called in re.findall(r"(?:to_apply|calls|branch_computations=\{|true_computation|"
                                         r"false_computation)=?(%[\w.\-]+)", ins.attributes):
                    walk(called, count, loops)
                continue
            flops, kind = 0.0, ins.opcode
            if ins.opcode == "fusion":
                flops = products_in(computations, shapes, _called(ins, "calls"))
                fusion_kind = re.search(r'"kind":"(\w+)"', ins.attributes) or re.search(r"kind=(\w+)", ins.attributes)
                kind = "gemm" if flops else f"fusion:{fusion_kind.group(1)}"
                moved = fusion_bytes(computations, shapes, ins)
            else:
                moved = sum(array_bytes(shapes.get(o, "")) for o in ins.operands) + array_bytes(ins.shape)
                if ins.opcode == "custom-call":
                    kind = re.search(r'custom_call_target="([^"]+)"', ins.attributes).group(1)
                    if kind in _FREE_CUSTOM_CALLS:
                        continue
                    if "fmha" in kind:
                        flops = attention_flops(kind, ins.shape.lstrip("("))
                    elif "gemm" in kind or "matmul" in kind:
                        flops = _custom_gemm_flops(ins, shapes)
                        kind = "gemm"
                elif ins.opcode == "dot":
                    flops, kind = dot_flops(ins, shapes), "gemm"
            found.append(Kernel(kind, ins.name, ins.shape, loops or "(top level)", count, moved, flops, op_name))

    walk(entry, 1, "")
    return found


def _custom_gemm_flops(ins: Instruction, shapes) -> float:
    """A cuBLAS GEMM custom call: 2 x output elements x the lhs's contracted size (from its backend config)."""
    contracting = re.search(r'"lhs_contracting_dimensions":\["?(\d+)', ins.attributes)
    lhs = _dims(shapes[ins.operands[0]])
    k = lhs[int(contracting.group(1))] if contracting else lhs[-1]
    return 2 * _product(_ARRAY.search(ins.shape).group(2)) * k


def roofline_seconds(kernel: Kernel, peak: float, bandwidth: float, floor: float = 0.0) -> float:
    """One kernel's lower bound on time for all its runs: max(FLOPs / peak, bytes / bandwidth, floor) per run
    (`floor`: the least time any kernel run takes, in seconds)."""
    return kernel.count * max(kernel.flops / peak, kernel.bytes / bandwidth, floor)


def measured_seconds(profile_dir: str, module: str) -> tuple[dict[str, float], int]:
    """The measured time of each of `module`'s kernels, summed over the newest `jax.profiler` trace under
    profile_dir/plugins/profile/ (as `bench/train_step.py --profile_dir` and the trainer write them), and the number
    of train steps it holds (its "train" step annotations): {HLO instruction name: seconds}, steps. Kernels are the
    events that name their HLO instruction (`hlo_op`) on the trace's devices (a GPU's kernels on its streams; the
    lines the profiler derives from them, such as "XLA Ops", are left out), or on the host where it has no device
    (a CPU's thunks). Raises ValueError for a directory without a trace or steps."""
    traces = sorted(pathlib.Path(profile_dir).glob("plugins/profile/*/*.trace.json.gz"))
    if not traces:
        raise ValueError(f"no jax.profiler trace under {profile_dir}/plugins/profile/ (write one with "
                         "bench/train_step.py --profile_dir)")
    with gzip.open(traces[-1]) as f:
        events = json.load(f)["traceEvents"]
    names = lambda kind: {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
                          if e.get("ph") == "M" and e.get("name") == kind}
    devices = {pid for (pid, _), name in names("process_name").items() if name.startswith("/device:")}
    derived = {thread for thread, name in names("thread_name").items() if name in _DERIVED_LINES}
    steps = len({e["args"]["step_num"] for e in events if e.get("name") == "train" and "step_num" in e.get("args", {})})
    if not steps:
        raise ValueError(f"{traces[-1]} holds no train steps (\"train\" step annotations)")
    seconds = collections.Counter()
    for e in events:
        args = e.get("args", {})
        if (e.get("ph") == "X" and "hlo_op" in args and args.get("hlo_module", module).split("(")[0] == module
                and (e["pid"] in devices or not devices) and (e["pid"], e["tid"]) not in derived):
            seconds[args["hlo_op"]] += e["dur"] * 1e-6
    return dict(seconds), steps


def summary(found: list[Kernel], peak: float, bandwidth: float, group) -> list[tuple[str, int, float, float, float]]:
    """(group, runs, GiB moved, TFLOP, ms at the roofline) per `group(kernel)`, slowest first."""
    rows = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    for k in found:
        row = rows[group(k)]
        row[0] += k.count
        row[1] += k.count * k.bytes / 2**30
        row[2] += k.count * k.flops / 1e12
        row[3] += roofline_seconds(k, peak, bandwidth) * 1e3
    return sorted(((name, *row) for name, row in rows.items()), key=lambda r: -r[4])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_model_flags(p)
    p.add_argument("--topology", default="h200",
                   help="a GPU of sedd_jax.compile.GPU_TARGETS (a100, h100, h200), or 'local': this machine's GPU")
    p.add_argument("--chunk_runs", type=int, default=9,
                   help="iterations counted for loops of unknown trip count (the masked-positions chunk loop)")
    p.add_argument("--top", type=int, default=25, help="the kernels listed one by one (slowest first)")
    p.add_argument("--kernel_floor_us", type=float, default=2.0,
                   help="the least time a kernel run is taken to need (launch, ramp-up), for a second estimate")
    p.add_argument("--save_hlo", default=None, help="also write the compiled program's text to this file")
    p.add_argument("--hlo", default=None,
                   help="read a program written by --save_hlo instead of compiling (--topology names its chip)")
    p.add_argument("--profile", default=None,
                   help="with --hlo: a directory with a jax.profiler trace of the same program's steps "
                        "(bench/train_step.py --profile_dir), whose measured kernel times are set against the estimate")
    args = p.parse_args()
    if args.hlo and args.save_hlo:
        p.error("--hlo reads a saved program: it takes no --save_hlo")
    if args.profile and not args.hlo:
        p.error("--profile needs --hlo: the program the trace ran (bench/train_step.py --save_hlo)")

    import jax

    from sedd_jax import compile as aot, flops, parallel, train_state, train_step

    config = common.config_from_flags(args)
    print(common.describe(config))
    graph, _, model, optimizer, loss_fn = train_step.training_components(config)
    if args.topology == "local":  # this machine's first device, its data sheet found by its name
        device_kind = jax.devices()[0].device_kind
        target = aot.gpu_target(device_kind)
    elif args.topology in aot.GPU_TARGETS:
        target = aot.GPU_TARGETS[args.topology]
        device_kind = target.device_kind
    else:
        p.error(f"--topology={args.topology!r}: choose one of {sorted(aot.GPU_TARGETS)} or 'local'")
    bandwidth = target.bandwidth if target else None
    if args.hlo:
        try:
            with open(args.hlo) as f:
                text = f.read()
        except OSError as e:
            p.error(f"--hlo={args.hlo!r}: {e.strerror}")
        if "ENTRY" not in text:
            p.error(f"--hlo={args.hlo!r} holds no HLO program (write one with --save_hlo)")
        program_line = f"program read from {args.hlo}"
    else:
        devices = jax.devices()[:1] if args.topology == "local" else aot.topology_devices(args.topology)
        mesh = parallel.create_mesh(config, devices)
        _, abstract_state, shardings = train_state.train_state_layout(config, model, optimizer, mesh,
                                                                      jax.random.key(0))
        step = train_step.compile_train_step(config, model, loss_fn, optimizer, mesh, abstract_state, shardings)
        text, program_line = step.as_text(), common.compiled_memory_line(step)
        if args.save_hlo:
            common.save_program(text, args.save_hlo)
            program_line += f"; program written to {args.save_hlo}"
    peak = flops.peak_flops(device_kind, config.model.compute_dtype)
    if peak is None or bandwidth is None:
        raise SystemExit(f"no data-sheet peak or bandwidth for {device_kind!r} (sedd_jax.flops.PEAK_TFLOPS, "
                         "sedd_jax.compile.GPU_TARGETS)")
    print(f"device: {device_kind}, peak {peak / 1e12:.0f} TFLOP/s ({config.model.compute_dtype}), "
          f"{bandwidth / 1e12:.2f} TB/s; {program_line}")

    found = kernels(text, args.chunk_runs)
    print(f"\n{'kernel kind':44s} {'runs':>6s} {'GiB':>8s} {'TFLOP':>7s} {'ms':>8s}")
    for name, runs, gib, tflop, ms in summary(found, peak, bandwidth, lambda k: k.kind):
        print(f"{name:44s} {runs:6d} {gib:8.2f} {tflop:7.2f} {ms:8.2f}")
    print(f"\n{'loop':60s} {'runs':>6s} {'GiB':>8s} {'TFLOP':>7s} {'ms':>8s}")
    for name, runs, gib, tflop, ms in summary(found, peak, bandwidth, lambda k: k.loops):
        print(f"{name[-60:]:60s} {runs:6d} {gib:8.2f} {tflop:7.2f} {ms:8.2f}")

    total = sum(roofline_seconds(k, peak, bandwidth) for k in found)
    products = sum(k.count * k.flops for k in found)
    tokens = config.training.batch_size * config.model.length
    model_flops = flops.train_flops_per_token(config, graph.dim) * tokens
    print(f"\nat the roofline: {total * 1e3:.2f} ms per step ({tokens / total:,.0f} tokens/s); "
          f"{sum(k.count * k.bytes for k in found) / 2**30:.1f} GiB moved, {products / 1e12:.2f} TFLOP of products "
          f"run ({products / peak * 1e3:.2f} ms at peak)")
    print(f"model FLOPs (sedd_jax.flops, as bench/train_step.py's MFU) {model_flops / 1e12:.2f} TFLOP per step: "
          f"MFU at most {model_flops / peak / total:.1%}")
    floor = args.kernel_floor_us * 1e-6
    runs = sum(k.count for k in found)
    below = sum(k.count for k in found if roofline_seconds(k, peak, bandwidth) < k.count * floor)
    floored = sum(roofline_seconds(k, peak, bandwidth, floor) for k in found)
    print(f"{runs:,} kernel runs per step, {below:,} of them under {args.kernel_floor_us:g} us at the roofline; with "
          f"{args.kernel_floor_us:g} us as the least a kernel run takes (--kernel_floor_us): {floored * 1e3:.2f} ms, "
          f"MFU at most {model_flops / peak / floored:.1%}")
    print(f"\nslowest {args.top} kernels (all runs): ms, GiB, TFLOP, runs, kernel, result, operation")
    for k in sorted(found, key=lambda k: -roofline_seconds(k, peak, bandwidth))[:args.top]:
        print(f"{roofline_seconds(k, peak, bandwidth) * 1e3:7.2f} {k.count * k.bytes / 2**30:7.2f} "
              f"{k.count * k.flops / 1e12:6.2f} x{k.count:<4d} {k.name[:28]:28s} {k.shape[:48]:48s} {k.op_name[-70:]}")
    if args.profile:
        module = re.search(r"^HloModule ([\w.\-]+)", text, re.M)
        try:
            measured, steps = measured_seconds(args.profile, module.group(1) if module else "")
        except ValueError as e:
            p.error(f"--profile={args.profile!r}: {e}")
        compare_with_profile(found, measured, steps, peak, bandwidth, args.top)


def compare_with_profile(found: list[Kernel], measured: dict[str, float], steps: int, peak: float, bandwidth: float,
                         top: int):
    """Prints the measured time of the program's kernels per step against their estimate: in all, by kind, and the
    kernels furthest from it."""
    bound = {k.name: roofline_seconds(k, peak, bandwidth) for k in found}  # seconds per step, all runs
    ran = [k for k in found if k.name.lstrip("%") in measured]
    took = {k.name: measured[k.name.lstrip("%")] / steps for k in ran}
    total, estimate = sum(took.values()), sum(bound[k.name] for k in ran)
    if not total:
        raise SystemExit("no kernel of the program has a timed event in the trace: was it traced running this "
                         "program (bench/train_step.py --profile_dir with --save_hlo)?")
    missing = [k for k in found if k.name.lstrip("%") not in measured]
    print(f"\nmeasured ({steps} traced steps): the program's kernels took {total * 1e3:.2f} ms per step against "
          f"{estimate * 1e3:.2f} ms at the roofline ({estimate / total:.0%} of the roofline's speed); "
          f"{len(missing)} of its {len(found)} kernels have no event in the trace "
          f"({sum(bound[k.name] for k in missing) * 1e3:.2f} ms at the roofline)")
    kinds = collections.defaultdict(lambda: [0.0, 0.0])
    for k in ran:
        kinds[k.kind][0] += took[k.name]
        kinds[k.kind][1] += bound[k.name]
    print(f"\n{'kernel kind':44s} {'measured ms':>12s} {'roofline ms':>12s} {'of roofline speed':>18s}")
    for kind, (seconds, estimated) in sorted(kinds.items(), key=lambda item: -item[1][0]):
        print(f"{kind:44s} {seconds * 1e3:12.2f} {estimated * 1e3:12.2f} {estimated / max(seconds, 1e-12):18.0%}")
    print(f"\n{top} kernels furthest from the roofline (per step): measured ms, roofline ms, GB/s, TFLOP/s, runs, "
          "kernel, operation")
    for k in sorted(ran, key=lambda k: bound[k.name] - took[k.name])[:top]:
        seconds = max(took[k.name], 1e-12)
        print(f"{seconds * 1e3:7.2f} {bound[k.name] * 1e3:7.2f} "
              f"{k.count * k.bytes / seconds / 1e9:7.0f} {k.count * k.flops / seconds / 1e12:7.1f} x{k.count:<4d} "
              f"{k.name[:28]:28s} {k.op_name[-70:]}")


if __name__ == "__main__":
    main()
