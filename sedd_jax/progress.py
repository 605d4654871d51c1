"""What a training run reports: the console, metrics.jsonl, TensorBoard (clu), sample texts, memory estimates,
profiles of train steps.

Everything here writes on process 0 only (but a profile, which each process writes for its own devices), so every
process of a multi-host run can call it.
metrics.jsonl holds one strict-JSON object per logged step: step, train_loss (nats per token), grad_norm,
learning_rate, skipped_updates (run total), steps_per_sec, tokens_per_sec, on GPUs and TPUs mfu (model-FLOPs
utilisation, `TrainProgress`), and at eval steps eval_loss,
eval_loss_ci95 and eval_ppl_bound; non-finite values are null and named in "nonfinite".
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from typing import Iterator, TextIO

import jax
import numpy as np
from etils import epath

from sedd_jax import extras
from sedd_jax.program_memory import format_bytes, memory_summary

periodic_actions = extras.require("clu.periodic_actions", "training")


LOG_FILE = "train.log"
_log_files: list[TextIO] = []


def log(message: str) -> None:
    """Prints on process 0, and appends the line, time-stamped, to the open `log_file`s."""
    if jax.process_index() != 0:
        return
    print(message, flush=True)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    for f in _log_files:
        f.write("".join(f"{stamp} {line}\n" for line in message.splitlines()))
        f.flush()


@contextlib.contextmanager
def log_file(workdir: str) -> Iterator[None]:
    """Within the block, `log` lines also go to workdir/train.log (appended; process 0; not on gs:// and other
    object stores, which cannot append). An exception leaving the block is logged there as its last line."""
    if jax.process_index() != 0 or "://" in str(workdir):
        yield
        return
    path = epath.Path(workdir) / LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        _log_files.append(f)
        try:
            yield
        except BaseException as e:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} stopped: {type(e).__name__}: "
                    f"{' '.join(str(e).split())}\n")
            raise
        finally:
            _log_files.remove(f)


def config_lines(config) -> list[str]:
    """A config as one line per section (`model: hidden_size=128, n_heads=4, ...`), top-level fields first."""
    d = config.to_dict()
    top = ", ".join(f"{k}={v}" for k, v in d.items() if not isinstance(v, dict))
    return ([f"config: {top}"] if top else []) + [
        f"  {k}: " + ", ".join(f"{f}={v}" for f, v in section.items())
        for k, section in d.items() if isinstance(section, dict)]


def report_memory(compiled, what: str) -> None:
    """Logs a compiled program's memory per device; a MemoryError when it exceeds the device's memory."""
    memory = memory_summary(compiled)
    if memory is None:
        return
    log(f"[{what}] per-device memory: arguments {format_bytes(memory['arguments'])}, "
        f"outputs {format_bytes(memory['outputs'])}, temporaries "
        f"{format_bytes(memory['temporaries'])}, total ~{format_bytes(memory['total'])}")
    limit = (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")
    if limit and memory["total"] > limit:
        raise MemoryError(
            f"the {what} needs ~{format_bytes(memory['total'])} per device but {format_bytes(limit)} is available; "
            "shard more (--config.mesh.fsdp), accumulate (--config.training.accum) or shrink the batch; "
            "python -m sedd_jax.compile checks a config without running it")


class MetricsLog:
    """metrics.jsonl (appended) and TensorBoard events in `workdir`, on process 0.

    `resumed_at`: the step a run resumes from. Lines of later steps (logged before a preemption and about to be
    recomputed) are dropped once, so every step appears once. Cloud workdirs (gs://) cannot append to an
    object: there the file is rewritten at each log (one line per logged step keeps it small)."""

    def __init__(self, workdir: str, resumed_at: int = 0):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        metric_writers = extras.require("clu.metric_writers", "training metrics")

        self._path = epath.Path(workdir) / "metrics.jsonl"
        self._append = "://" not in str(workdir)
        kept = [line for line in (self._path.read_text().splitlines() if self._path.exists() else [])
                if json.loads(line)["step"] <= resumed_at]
        self._lines = [] if self._append else kept
        if self._path.exists():
            self._path.write_text("".join(line + "\n" for line in kept))
        self.writer = metric_writers.AsyncWriter(metric_writers.SummaryWriter(str(workdir)))

    def write(self, step: int, scalars: dict) -> None:
        """One strict-JSON line: non-finite values are written as null and named in "nonfinite"."""
        if not self.enabled:
            return
        nonfinite = sorted(k for k, v in scalars.items() if not math.isfinite(v))
        record = {"step": step, **{k: None if k in nonfinite else v for k, v in scalars.items()}}
        line = json.dumps(dict(record, nonfinite=nonfinite) if nonfinite else record, allow_nan=False)
        if self._append:
            with self._path.open("a") as f:
                f.write(line + "\n")
        else:
            self._lines.append(line)
            self._path.write_text("\n".join(self._lines) + "\n")
        self.writer.write_scalars(step, {k: v for k, v in scalars.items() if k not in nonfinite})

    def write_texts(self, step: int, texts: dict[str, str]) -> None:
        """Texts for TensorBoard's text tab (e.g. the samples of a snapshot)."""
        if self.enabled:
            self.writer.write_texts(step, texts)

    def close(self) -> None:
        if self.enabled:
            self.writer.flush()
            self.writer.close()


class TrainProgress(periodic_actions.PeriodicAction):
    """clu periodic action for the train metrics: call it after every step with that step's metrics (device
    arrays, not fetched); every `every_steps` steps and at `num_steps` it fetches the window at once, prints
    the progress line (loss, speed, ETA, skipped updates) and keeps the window's scalars in `scalars`
    (means; counters as of the last step), which it returns; {} between log steps.

    With flops_per_step (the model's train FLOPs per step, `sedd_jax.flops`) and peak_flops (the peak FLOP/s of all
    the chips together; None where unknown, as on CPUs) it also reports mfu: flops_per_step x steps/s / peak_flops,
    at the window's steps/s (which counts the time of evals and checkpoints within it)."""

    COUNTERS = ("skipped_updates", "consecutive_skipped")

    def __init__(self, *, every_steps: int, num_steps: int, tokens_per_step: int, start_step: int,
                 flops_per_step: float | None = None, peak_flops: float | None = None):
        super().__init__(every_steps=every_steps, on_steps=[num_steps])
        self.num_steps, self.tokens_per_step = num_steps, tokens_per_step
        self.flops_per_step, self.peak_flops = flops_per_step, peak_flops
        self._pending: list[dict] = []
        self._init_and_check(start_step, time.monotonic())    # the first window starts at the resumed step
        self.scalars: dict = {}

    def __call__(self, step: int, metrics: dict) -> dict:
        self._pending.append(metrics)
        self.scalars = {}
        super().__call__(step)
        return self.scalars

    def _apply(self, step: int, t: float) -> None:
        fetched, self._pending = jax.device_get(self._pending), []
        skipped = sum(int(m.pop("update_skipped")) for m in fetched)
        scalars = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0] if k not in self.COUNTERS}
        scalars.update({k: int(fetched[-1][k]) for k in self.COUNTERS})
        steps_per_sec = (step - self._previous_step) / max(t - self._previous_time, 1e-9)
        scalars.update(steps_per_sec=steps_per_sec, tokens_per_sec=steps_per_sec * self.tokens_per_step)
        if self.flops_per_step and self.peak_flops:
            scalars["mfu"] = steps_per_sec * self.flops_per_step / self.peak_flops
        eta = (self.num_steps - step) / max(steps_per_sec, 1e-9)
        log(f"step {step}/{self.num_steps} | train_loss {scalars['train_loss']:.4f} nats/token | "
            f"{steps_per_sec:.2f} steps/s | {scalars['tokens_per_sec']:,.0f} tokens/s | "
            + (f"MFU {100 * scalars['mfu']:.1f}% | " if "mfu" in scalars else "")
            + f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}"
            + (f" | skipped {skipped} of {len(fetched)} updates (non-finite or too large)" if skipped else ""))
        self.scalars = scalars


class StepProfile:
    """A `jax.profiler` trace of train steps `first + 1 .. first + count` (none if count is 0) into
    `workdir/plugins/profile/<time>/`, where TensorBoard's Profile tab finds it (`tensorboard --logdir=workdir` with
    the tensorboard-plugin-profile package). Each step is a `StepTraceAnnotation`, so the profile splits time by
    step. Every process traces its own devices; in a run of several processes each writes under
    `workdir/profiles/process_<i>/` (a run of its own in TensorBoard: processes on one host would otherwise write
    the same file). Only process 0 logs.

    Wrap each train step's call in `step(number)` and pass its outputs to `after(number, outputs)`: the trace stops
    once the last traced step's outputs exist. `stop()` ends a trace still running (a run that stopped early)."""

    def __init__(self, workdir: str, first: int, count: int):
        self.logdir = (workdir if jax.process_count() == 1
                       else os.path.join(workdir, "profiles", f"process_{jax.process_index()}"))
        self.workdir, self.first, self.last = workdir, first, first + count
        self.running = False

    @contextlib.contextmanager
    def step(self, number: int) -> Iterator[None]:
        if number == self.first + 1 and self.last > self.first:
            jax.profiler.start_trace(self.logdir)
            self.running = True
            log(f"profiling train steps {number}-{self.last} into {self.logdir}/plugins/profile/"
                + (" (each process into its own profiles/process_<i>)" if self.logdir != self.workdir else ""))
        if not self.running:
            yield
            return
        with jax.profiler.StepTraceAnnotation("train", step_num=number):
            yield

    def after(self, number: int, outputs) -> None:
        if self.running and number >= self.last:
            jax.block_until_ready(outputs)
            self.stop()

    def stop(self) -> None:
        if self.running:
            jax.profiler.stop_trace()
            self.running = False
            log(f"profile written to {self.logdir}/plugins/profile/: `tensorboard --logdir={self.workdir}` "
                "shows it in its Profile tab (pip install tensorboard-plugin-profile)")


def write_samples(workdir: str, step: int, tokens: np.ndarray, tokenizer, metrics_log: MetricsLog | None = None):
    """workdir/samples/iter_<step>.txt: the decoded rows of int32[N, L] `tokens`; also to TensorBoard's text tab
    (tag "samples") through `metrics_log`."""
    if jax.process_index() != 0:
        return
    directory = epath.Path(workdir) / "samples"
    directory.mkdir(parents=True, exist_ok=True)
    texts = [tokenizer.decode([int(t) for t in row]) for row in tokens]
    (directory / f"iter_{step}.txt").write_text("".join(f"=== sample {i} ===\n{text}\n" for i, text in enumerate(texts)))
    if metrics_log is not None:  # markdown: each sample as a code block, so its spacing and symbols survive
        metrics_log.write_texts(step, {"samples": "\n\n".join(f"sample {i}:\n\n```\n{text}\n```"
                                                                for i, text in enumerate(texts))})
