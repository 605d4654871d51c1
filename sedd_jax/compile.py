"""Will a config fit on a TPU slice? Compile the train step ahead of time, without the hardware.

    python -m sedd_jax.compile --config=owt_small --topology=v5e:8x8 [--config.mesh.fsdp=4 ...]   # or sedd-compile
    python -m sedd_jax.compile --config=configs/tiny.py --topology=cpu:8

--config names a shipped config (tiny, owt_small, owt_medium, text8) or a config file.
--topology names a TPU slice as libtpu does (`v4:2x2x2`, `v5e:4x4`, `v5p:2x2x4`, `v6e:8x8`), compiled by
libtpu's compiler on this machine (the `[tpu]` extra: `pip install -e ".[tpu]"`; no TPU needed), NVIDIA GPUs
(`h100`, `h200:8` for 8 on one host, `a100:2x8` for two hosts of 8), compiled by XLA's GPU compiler from a
description of the chip (`GPU_TARGETS`; JAX's CUDA plugin: `pip install -U "jax[cuda12]"`; no GPU needed), or
`cpu:N` for N fake CPU devices. A GPU's memory is what JAX's allocator takes of it: XLA_PYTHON_CLIENT_MEM_FRACTION
(JAX's default 0.75). The program is the trainer's (`train_step.compile_train_step`: the same step, shardings,
donation and config). It prints the mesh, the memory per device (arguments, outputs, temporaries, total)
against the device's HBM, the FLOPs per step and per token, and whether it fits; a config that does not fit
is told what to change. `--format=markdown` prints a row of docs/scale.md's table, `--format=json` an object.
Exit status: 0 fits, 3 does not fit, 1 bad input.

FLOPs: XLA's cost analysis counts a loop body once, so the scanned blocks and accumulation loop of the real
program would be undercounted. The FLOPs are those XLA counts in the same train step lowered with the blocks
unrolled, without recomputation and without accumulation (the useful work of a step, per token; within ~1%
of `sedd_jax.flops.train_flops_per_token`, the analytic count that MFU figures use).
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import json
import math
import os
import re
import sys

from absl import flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS

# HBM per chip (GiB) by the device_kind libtpu reports, from the vendor's data sheets.
HBM_GIB_PER_CHIP = {"TPU v4": 32, "TPU v5 lite": 16, "TPU v5": 95, "TPU v6 lite": 32}
TOPOLOGY_EXAMPLES = "v4:2x2x2, v5e:4x4, v5p:2x2x4, v6e:8x8, h100:8, a100:2x8 or cpu:8"


@dataclasses.dataclass(frozen=True)
class GpuTarget:
    """What XLA's GPU compiler needs to know of a chip it cannot query (its `GpuTargetConfig`): the SXM parts'
    figures from NVIDIA's data sheets; memory as nvidia-smi reports it."""
    device_kind: str
    compute_capability: tuple[int, int]
    cores: int                   # streaming multiprocessors
    fpus_per_core: int
    memory_mib: int
    bandwidth: float             # bytes/s
    l2_mib: int
    clock_ghz: float
    shared_memory_per_core_kib: int
    shared_memory_per_block_optin_kib: int


GPU_TARGETS = {
    "a100": GpuTarget("NVIDIA A100-SXM4-80GB", (8, 0), 108, 64, 81920, 2.039e12, 40, 1.41, 164, 163),
    "h100": GpuTarget("NVIDIA H100 80GB HBM3", (9, 0), 132, 128, 81559, 3.35e12, 50, 1.98, 228, 227),
    "h200": GpuTarget("NVIDIA H200", (9, 0), 132, 128, 143771, 4.8e12, 50, 1.98, 228, 227),
}
DEFAULT_GPU_MEMORY_FRACTION = 0.75  # JAX preallocates this share of a GPU's memory for its allocator
DOES_NOT_FIT = 3


@dataclasses.dataclass
class CompileReport:
    """What compiling the train step of `config` for `topology` showed. Bytes are per device."""
    config_name: str
    topology: str
    device_kind: str
    devices: int
    hosts: int
    mesh: dict
    batch_size: int
    accum: int
    length: int
    compute_dtype: str
    remat: str
    hbm: float | None                 # bytes per device (None for CPUs)
    state_bytes: float                # the train state's share per device (parameters, EMA, optimizer)
    memory: dict | None               # program_memory.memory_summary of the step (None when it did not compile)
    fits: bool
    flops_per_token: float            # XLA's count (see the module docstring)
    analytic_flops_per_token: float   # sedd_jax.flops.train_flops_per_token
    out_of_memory: str | None = None  # the compiler's message when it refused the program
    compiled_flops_per_device: float | None = None  # XLA's count of the compiled program (loops counted once)
    advice: list = dataclasses.field(default_factory=list)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.length

    @property
    def flops_per_step(self) -> float:
        return self.flops_per_token * self.tokens_per_step


def topology_devices(topology: str) -> list:
    """The devices of `topology`: a TPU slice's (abstract: compile only) or N of this host's CPU devices."""
    import jax

    match = re.fullmatch(r"cpu:(\d+)", topology)
    if match:
        count = int(match.group(1))
        available = jax.devices("cpu")
        if count < 1 or len(available) < count:
            raise ValueError(f"--topology={topology} needs {count} CPU devices and jax has {len(available)}; set "
                             f"XLA_FLAGS=--xla_force_host_platform_device_count={count} before jax starts (the "
                             "command line does this itself)")
        return available[:count]
    match = re.fullmatch(r"([a-z]\d+)(?::(\d+)(?:x(\d+))?)?", topology)
    if match and match.group(1) in GPU_TARGETS:
        return _gpu_devices(*match.groups())
    if not re.fullmatch(r"v\d+[a-z]*:\d+(x\d+)*", topology):
        raise ValueError(f"--topology={topology!r} is not a TPU slice, a GPU ({', '.join(GPU_TARGETS)}) or cpu:N; "
                         f"e.g. {TOPOLOGY_EXAMPLES}")
    if importlib.util.find_spec("libtpu") is None:
        raise ValueError(f"compiling for {topology} needs libtpu's compiler: pip install -e \".[tpu]\" (it works "
                         "on machines without a TPU)")
    from jax.experimental import topologies

    try:
        return list(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)
    except Exception as e:  # libtpu raises JaxRuntimeError with its own wording
        raise ValueError(f"libtpu does not know the topology {topology!r} ({e}); e.g. {TOPOLOGY_EXAMPLES}") from None


def _gpu_devices(name: str, first: str | None, second: str | None) -> list:
    """Compile-only devices of `name` (a GPU_TARGETS key): one, `first` on one host, or `first` hosts of `second`."""
    hosts, per_host = (int(first), int(second)) if second else (1, int(first or 1))
    if hosts < 1 or per_host < 1:
        raise ValueError(f"--topology={name}:{first}{'x' + second if second else ''} names no devices; e.g. "
                         f"{name}:8 (8 GPUs on one host) or {name}:2x8 (two hosts of 8)")
    if not _has_cuda_plugin():
        raise ValueError(f"compiling for {name} GPUs needs JAX's CUDA plugin: pip install -U \"jax[cuda12]\" (it "
                         "compiles on machines without a GPU)")
    from jax.experimental import topologies

    try:
        topology = topologies.get_topology_desc(platform="cuda", target_config=gpu_target_config(GPU_TARGETS[name]),
                                                topology=f"1x{hosts}x{per_host}")
    except Exception as e:  # the plugin raises JaxRuntimeError or NotImplementedError with its own wording
        raise ValueError(f"JAX's CUDA plugin cannot describe {hosts} x {per_host} {name} GPUs ({e})") from None
    return list(topology.devices)


def _has_cuda_plugin() -> bool:
    try:
        return any(importlib.util.find_spec(f"jax_plugins.{name}") for name in ("xla_cuda12", "xla_cuda13"))
    except ModuleNotFoundError:  # no jax_plugins package at all
        return False


def gpu_target_config(target: GpuTarget) -> str:
    """`target` as the text `GpuTargetConfig` that XLA's GPU compiler takes; cuDNN's version is the installed
    one (JAX's CUDA plugin brings it), for the fused attention's kernels."""
    from importlib import metadata

    cudnn = (9, 0)
    for distribution in ("nvidia-cudnn-cu12", "nvidia-cudnn-cu13"):
        try:
            cudnn = tuple(int(part) for part in metadata.version(distribution).split(".")[:2])
            break
        except (metadata.PackageNotFoundError, ValueError):
            continue
    major, minor = target.compute_capability
    return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {target.shared_memory_per_core_kib * 1024}
  threads_per_core_limit: 2048
  core_count: {target.cores}
  fpus_per_core: {target.fpus_per_core}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(target.bandwidth)}
  l2_cache_size: {target.l2_mib * 2**20}
  clock_rate_ghz: {target.clock_ghz}
  device_memory_size: {target.memory_mib * 2**20}
  shared_memory_per_block_optin: {target.shared_memory_per_block_optin_kib * 1024}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: {cudnn[0]} minor: {cudnn[1]} }}
device_description_str: "{target.device_kind}"
"""


def gpu_memory_fraction() -> float:
    """The share of each GPU's memory that JAX's allocator takes: XLA_PYTHON_CLIENT_MEM_FRACTION, else 0.75."""
    value = os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "")
    try:
        fraction = float(value) if value else DEFAULT_GPU_MEMORY_FRACTION
    except ValueError:
        raise ValueError(f"XLA_PYTHON_CLIENT_MEM_FRACTION={value!r} is not a number; e.g. 0.9") from None
    if not 0 < fraction <= 1:
        raise ValueError(f"XLA_PYTHON_CLIENT_MEM_FRACTION={value} is not in (0, 1]; e.g. 0.9")
    return fraction


def gpu_target(device_kind: str) -> GpuTarget | None:
    """The GPU_TARGETS entry of a device kind as JAX names it (e.g. "NVIDIA H200"), or None."""
    return next((t for t in GPU_TARGETS.values() if t.device_kind == device_kind), None)


def hbm_per_device(devices) -> float | None:
    """Bytes of HBM per device that a program may use: the chip's, shared by the devices on one chip (v4 shows
    its two TensorCores as two devices), or JAX's share of a GPU's (`gpu_memory_fraction`); None for CPUs."""
    kind = devices[0].device_kind
    gpu = gpu_target(kind)
    if gpu is not None:
        return gpu.memory_mib * 2**20 * gpu_memory_fraction()
    if kind not in HBM_GIB_PER_CHIP:
        return None
    per_chip = collections.Counter(tuple(d.coords) for d in devices)
    return HBM_GIB_PER_CHIP[kind] * 2**30 / max(per_chip.values())


def xla_flops_per_token(config) -> float:
    """FLOPs per token of one train step as XLA counts them, in the step lowered for one host device with the
    blocks unrolled, no recomputation, no accumulation and the whole network's loss (loop bodies would count once,
    among them the chunks of the absorbing graph's loss at masked positions only), the work that MFU counts."""
    import jax
    import jax.numpy as jnp

    from sedd_jax import parallel, train_state, train_step

    probe = config.copy_and_resolve_references()
    probe.model.scan_blocks, probe.model.remat, probe.training.accum = False, "none", 1
    probe.training.masked_positions_only = False
    batch, length = 2, int(probe.model.length)
    probe.training.batch_size = batch
    probe.mesh.data, probe.mesh.fsdp, probe.mesh.tensor = 1, 1, 1
    mesh = parallel.create_mesh(probe, jax.devices("cpu")[:1])
    _, _, model, optimizer, loss_fn = train_step.training_components(probe)
    _, abstract_state, _ = train_state.train_state_layout(probe, model, optimizer, mesh, jax.random.key(0))
    step = jax.jit(train_step.make_train_step(probe, model, loss_fn, optimizer, mesh))
    lowered = step.lower(abstract_state, jax.ShapeDtypeStruct((batch, length), jnp.int32), jax.random.key(0))
    return _flops(lowered.cost_analysis()) / (batch * length)


def _flops(cost_analysis) -> float | None:
    """XLA's FLOP count from a cost analysis; None where the backend gives none (GPUs compiled without one)."""
    cost = cost_analysis[0] if isinstance(cost_analysis, (list, tuple)) else cost_analysis
    return None if cost is None else float(cost["flops"])


def aot_compile(config, topology: str, config_name: str = "") -> CompileReport:
    """Compiles the trainer's train step of `config` for `topology`; see CompileReport."""
    import jax

    from sedd_jax import configs, flops, parallel, program_memory, train_state, train_step

    devices = topology_devices(topology)
    hosts = len({d.process_index for d in devices})
    configs.validate(config, device_count=len(devices), process_count=hosts)
    mesh = parallel.create_mesh(config, devices)
    graph, _, model, optimizer, loss_fn = train_step.training_components(config)
    _, abstract_state, shardings = train_state.train_state_layout(config, model, optimizer, mesh, jax.random.key(0))
    state_bytes = sum(math.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize
                      for a in jax.tree.leaves(abstract_state))
    memory, out_of_memory, compiled_flops = None, None, None
    try:
        compiled = train_step.compile_train_step(config, model, loss_fn, optimizer, mesh, abstract_state, shardings)
        memory = program_memory.memory_summary(compiled)
        compiled_flops = _flops(compiled.cost_analysis())
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        out_of_memory = str(e).split("\n")[0]
    hbm = hbm_per_device(devices)
    fits = out_of_memory is None and (hbm is None or memory is None or memory["total"] <= hbm)
    report = CompileReport(
        config_name=config_name, topology=topology, device_kind=devices[0].device_kind, devices=len(devices),
        hosts=hosts, mesh=dict(mesh.shape), batch_size=int(config.training.batch_size),
        accum=int(config.training.accum), length=int(config.model.length),
        compute_dtype=str(config.model.compute_dtype), remat=str(config.model.get("remat", "none")), hbm=hbm,
        state_bytes=state_bytes, memory=memory, fits=fits, flops_per_token=xla_flops_per_token(config),
        analytic_flops_per_token=flops.train_flops_per_token(config, graph.dim), out_of_memory=out_of_memory,
        compiled_flops_per_device=compiled_flops)
    if not fits:
        report.advice = advice(report, config)
    return report


def _needed_temporaries(report: CompileReport) -> float | None:
    """Temporaries the program needs: from the memory analysis, or from the compiler's refusal."""
    if report.memory is not None:
        return report.memory["temporaries"]
    match = re.search(r"HLO temporaries \(([\d.]+)([KMGT])\)", report.out_of_memory or "")
    if not match:
        return None
    return float(match.group(1)) * 2 ** (10 * "KMGT".index(match.group(2)) + 10)


def advice(report: CompileReport, config=None) -> list[str]:
    """What to change, most specific first, for a report that does not fit. With the report's `config`, the
    accumulation it suggests has been compiled and fits (see `_accumulation_that_fits`); without it, no
    accumulation is named, as none has been checked."""
    tips = []
    data, fsdp, tensor = (report.mesh[a] for a in ("data", "fsdp", "tensor"))
    state = report.state_bytes
    if report.hbm and state > 0.4 * report.hbm:
        tips.append(f"the train state alone takes {_gib(state)} per device: shard it over more devices with "
                    f"--config.mesh.fsdp={fsdp * 2 if data % 2 == 0 else fsdp} (now {fsdp})")
    per_device = report.batch_size // report.accum // (data * fsdp)
    if report.hbm and per_device > 1 and state < report.hbm:
        if config is None:
            tips.append(f"accumulate: a larger --config.training.accum (now {report.accum}, micro-batches of "
                        f"{per_device} sequences per device); compile again to see whether it fits")
        else:
            tips.append(_accumulation_that_fits(report, config, per_device))
    if report.remat != "full":
        tips.append(f"recompute more in the backward pass: --config.model.remat=full (now {report.remat})")
    tips.append(f"or a smaller --config.training.batch_size (now {report.batch_size}), or more devices")
    return tips


def _accumulation_factors(per_device: int) -> list[int]:
    """Factors of the micro-batch per device to try: 2, 4, 8, ... that divide it, then the whole of it (one
    sequence per device), smallest first."""
    factors = [2 ** i for i in range(1, per_device.bit_length()) if per_device % 2 ** i == 0]
    return factors + ([per_device] if per_device not in factors else [])


def _accumulation_that_fits(report: CompileReport, config, per_device: int) -> str:
    """The advice on training.accum, measured: compiles the train step with the micro-batch per device divided
    by 2, 4, 8, ... and names the first accumulation that fits with its compiled total, or says that none
    does. Temporaries do not shrink in proportion to the micro-batch (gradients and the accumulated sum stay),
    so no estimate stands in for the compile. Each compile takes about as long as the first one did."""
    tried = []
    for k in _accumulation_factors(per_device):
        accum = report.accum * k
        print(f"{report.config_name or 'config'} does not fit; compiling it with --config.training.accum={accum} "
              "to check that advice", file=sys.stderr, flush=True)
        fits, needs = _compile_with_accum(report, config, accum)
        if fits:
            also = f"; {', '.join(tried)}" if tried else ""
            return (f"accumulate: --config.training.accum={accum} (micro-batches of {per_device // k} sequences "
                    f"per device instead of {per_device}; compiled: {needs} of {_gib(report.hbm)}{also})")
        tried.append(f"accum={accum} needs {needs}")
    return (f"accumulation alone does not fit ({'; '.join(tried)} of {_gib(report.hbm)}): combine it with the "
            "changes below")


def _compile_with_accum(report: CompileReport, config, accum: int) -> tuple[bool, str]:
    """(fits, what it needs) for the train step of `config` with training.accum=`accum`, compiled for the
    report's topology and mesh."""
    import jax

    from sedd_jax import parallel, program_memory, train_state, train_step

    candidate = config.copy_and_resolve_references()
    candidate.training.accum = accum
    mesh = parallel.create_mesh(candidate, topology_devices(report.topology))
    _, _, model, optimizer, loss_fn = train_step.training_components(candidate)
    _, abstract_state, shardings = train_state.train_state_layout(candidate, model, optimizer, mesh, jax.random.key(0))
    try:
        compiled = train_step.compile_train_step(candidate, model, loss_fn, optimizer, mesh, abstract_state, shardings)
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        refused = dataclasses.replace(report, memory=None, out_of_memory=str(e).split("\n")[0])
        needed = _needed_temporaries(refused)
        return False, (f"temporaries {_gib(needed)} (the compiler refused it)" if needed
                       else "more than the compiler allows")
    memory = program_memory.memory_summary(compiled)
    if memory is None:
        return True, "an unknown total (no memory analysis)"
    return memory["total"] <= report.hbm, f"total {_gib(memory['total'])}"


def _gib(n: float) -> str:
    from sedd_jax import program_memory

    return program_memory.format_bytes(n)


def format_text(r: CompileReport) -> str:
    mesh = " x ".join(f"{k}={v}" for k, v in r.mesh.items())
    lines = [f"{r.config_name or 'config'} on {r.topology}: {r.devices} x {r.device_kind} on {r.hosts} host(s); "
             f"mesh {mesh}",
             f"batch {r.batch_size} x length {r.length} ({r.tokens_per_step:,} tokens per step), accum {r.accum}, "
             f"{r.compute_dtype}, remat {r.remat}"]
    hbm = f" of {_gib(r.hbm)} HBM" if r.hbm else ""
    if r.memory is not None:
        m = r.memory
        lines.append(f"memory per device: arguments {_gib(m['arguments'])}, outputs {_gib(m['outputs'])}, "
                     f"temporaries {_gib(m['temporaries'])}, total {_gib(m['total'])}{hbm}")
    else:
        lines.append(f"the compiler refused it: {r.out_of_memory}")
    lines.append(f"FLOPs per step {r.flops_per_step:.4g} ({r.flops_per_step / r.devices:.4g} per device); per "
                 f"token {r.flops_per_token:.4g} (analytic {r.analytic_flops_per_token:.4g}, ratio "
                 f"{r.flops_per_token / r.analytic_flops_per_token:.3f})")
    lines.append("fits" if r.fits else "DOES NOT FIT; change one of:")
    lines += [f"  - {tip}" for tip in r.advice]
    return "\n".join(lines)


MARKDOWN_HEADER = ("| config | topology | devices (hosts) | mesh data x fsdp x tensor | batch x length, accum | "
                   "memory per device: state, temporaries, total / HBM | fits | FLOPs per token (analytic) |\n"
                   "|---|---|---|---|---|---|---|---|")


def format_markdown(r: CompileReport) -> str:
    mesh = " x ".join(str(v) for v in r.mesh.values())
    hbm = _gib(r.hbm) if r.hbm else "-"
    if r.memory is not None:
        m = r.memory
        memory = f"{_gib(m['arguments'])}, {_gib(m['temporaries'])}, {_gib(m['total'])} / {hbm}"
    else:
        needed = _needed_temporaries(r)
        memory = f"refused: temporaries {_gib(needed) if needed else '?'} / {hbm}"
    return (f"| {r.config_name} | {r.topology} | {r.devices} {r.device_kind} ({r.hosts}) | {mesh} | "
            f"{r.batch_size} x {r.length}, {r.accum} | {memory} | {'yes' if r.fits else 'no'} | "
            f"{r.flops_per_token / 1e6:.1f} M ({r.analytic_flops_per_token / 1e6:.1f} M) |")


def format_json(r: CompileReport) -> str:
    return json.dumps(dict(dataclasses.asdict(r), tokens_per_step=r.tokens_per_step,
                           flops_per_step=r.flops_per_step), indent=2)


def main(argv):
    """Expected failures reach `cli.report_errors` (one `error:` line, exit status 1; --verbose: traceback)."""
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}: flags are --name=value")
    logging.set_verbosity(logging.WARNING)
    report = aot_compile(FLAGS.config, FLAGS.topology, config_name=_config_name())
    print({"text": format_text, "markdown": format_markdown, "json": format_json}[FLAGS.format](report))
    sys.exit(0 if report.fits else DOES_NOT_FIT)


def _config_name() -> str:
    """configs/owt_small.py -> owt_small, with the --config.* overrides given."""
    path = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--config=")), "config")
    overrides = [a[len("--config."):] for a in sys.argv if a.startswith("--config.")]
    return " ".join([os.path.splitext(os.path.basename(path))[0]] + overrides)


def _prepare_environment(argv) -> None:
    """Before jax starts: only the host platform (the local accelerator, if any, stays free for training), the
    fake devices of cpu:N, and libtpu's compiler usable beside another process that holds it."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    match = re.fullmatch(r"cpu:(\d+)", _flag_value(argv, "topology") or "")
    if match and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={match.group(1)}").strip()


def _flag_value(argv, name: str) -> str | None:
    """The value of flag `name` in `argv` as absl reads it, before absl runs: `--name=VALUE` or `--name VALUE`
    (one dash or two), the last one given, none after a bare `--`."""
    value = None
    args = iter(argv[1:])
    for arg in args:
        if arg == "--":
            break
        if arg in (f"-{name}", f"--{name}"):
            value = next(args, None)
        elif arg.startswith((f"-{name}=", f"--{name}=")):
            value = arg.split("=", 1)[1]
    return value


def _define_flags() -> None:
    """The command line's flags (defined when it runs, so that importing this module defines none)."""
    from sedd_jax.configs import command_line

    config_flags.DEFINE_config_file("config", None, command_line.CONFIG_HELP, lock_config=True)
    flags.DEFINE_string("topology", None, "TPU slice as libtpu names it (v4:2x2x2, v5e:4x4, v5p:2x2x4, v6e:8x8), "
                        "NVIDIA GPUs (h100, h200:8 on one host, a100:2x8 on two hosts; needs jax[cuda12]) or cpu:N "
                        "for N fake CPU devices.")
    flags.DEFINE_enum("format", "text", ["text", "markdown", "json"],
                      "Output: a report, a docs/scale.md row, or JSON.")
    flags.mark_flags_as_required(["config", "topology"])


def run():
    """Console script `sedd-compile`."""
    _prepare_environment(sys.argv)
    _define_flags()
    from sedd_jax.configs import command_line

    command_line.run(main, sys.modules[__name__], "sedd-compile")


if __name__ == "__main__":
    run()
