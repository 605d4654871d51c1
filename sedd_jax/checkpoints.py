"""Orbax checkpoints of a training run: save, resume, preemption, and EMA weights for sampling.

Layout of a workdir:
    workdir/config.json             the run's config (written once; a rerun must have the same shapes)
    workdir/checkpoints/<step>/     state/ (params, opt_state, step, skipped), ema/ (EMA params),
                                    data/ (per-host grain iterator state: process_<i>-of-<n>.json)

Checkpoints are written asynchronously every `training.snapshot_freq_for_preemption` steps (the last
`training.keep_checkpoints` are kept), and kept for good at multiples of `training.snapshot_freq`. Orbax
writes each step to a temporary directory and renames it when complete, so an interrupted save never
leaves a checkpoint that looks whole. Restoring takes the target shardings of the current mesh, so a run
can resume on another mesh shape.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from sedd_jax import configs

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"


def config_path(workdir: str) -> epath.Path:
    """workdir/config.json; workdirs may be local paths or cloud URLs (gs://...)."""
    return epath.Path(workdir) / CONFIG_FILE


def check_or_write_config(workdir: str, config) -> None:
    """First run: writes workdir/config.json. Rerun: the checkpoint shapes must match, else ValueError
    (nothing is touched)."""
    path = config_path(workdir)
    if path.exists():
        saved = ml_collections.ConfigDict(json.loads(path.read_text()))
        old, new = configs.shape_fields(saved), configs.shape_fields(config)
        diff = {k: (old[k], new[k]) for k in old if old[k] != new[k]}
        if diff:
            details = ", ".join(f"{k}: workdir has {a!r}, config has {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"{workdir} holds a run with another model shape ({details}); use a new --workdir "
                             "or the workdir's own config")
        return
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / (CONFIG_FILE + ".tmp")
        tmp.write_text(json.dumps(config.to_dict(), indent=2, default=str))
        tmp.rename(path)


def _absolute(workdir: str) -> epath.Path:
    return epath.Path(workdir if "://" in str(workdir) else os.path.abspath(workdir))


def create_manager(workdir: str, config, read_only: bool = False) -> ocp.CheckpointManager:
    t = config.training
    if read_only:
        options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    else:
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=int(t.snapshot_freq_for_preemption),
            max_to_keep=int(t.keep_checkpoints),
            keep_period=int(t.snapshot_freq),
            create=True,
            enable_async_checkpointing=True,
        )
    return ocp.CheckpointManager(_absolute(workdir) / CHECKPOINT_DIR, options=options,
                                 item_names=("state", "ema", "data"))


class IteratorSnapshot:
    """A data-iterator state frozen when the save starts (the asynchronous write must not see later
    batches), handed to grain's checkpoint handler as JSON bytes."""

    def __init__(self, iterator):
        self._state = json.dumps(iterator.get_state()).encode()

    def get_state(self) -> bytes:
        return self._state


def save(manager: ocp.CheckpointManager, step: int, state: dict, ema: Any, data_iter, force: bool = False) -> bool:
    """Saves (asynchronously) when the manager's policy says so, or always with `force`."""
    import grain

    args = ocp.args.Composite(state=ocp.args.StandardSave(state), ema=ocp.args.StandardSave(ema),
                              data=grain.checkpoint.CheckpointSave(data_iter))
    return manager.save(step, args=args, force=force)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: dict, abstract_ema: Any, data_iter):
    """Restores state and EMA onto the shardings carried by the abstract trees, and the iterator in place.

    The iterator state may come from a run with another process count: every process of a run is at the
    same global batch (sedd_jax.data.pipeline), so any process's saved state resumes every process here."""
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), ema=ocp.args.StandardRestore(abstract_ema)))
    data_iter.set_state(_saved_iterator_state(epath.Path(manager.directory) / str(step) / "data"))
    return restored["state"], restored["ema"]


def _saved_iterator_state(directory: epath.Path) -> dict:
    """The iterator state grain's handler wrote in `directory` (process_<i>-of-<n>.json): this process's
    file, else process 0's."""
    own = directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    candidates = [own] if own.exists() else sorted(directory.glob("process_0-of-*.json"))
    if not candidates:
        raise FileNotFoundError(f"{directory} holds no data-iterator state (process_<i>-of-<n>.json); the "
                                "checkpoint is incomplete: remove this step directory to resume from the one before")
    return json.loads(candidates[0].read_text())


def load_ema_params(workdir: str):
    """(config, EMA params) of the latest checkpoint of a training workdir, for `pretrained.load`."""
    from sedd_jax import models, official

    if not config_path(workdir).exists():
        raise FileNotFoundError(f"{workdir} has checkpoints/ but no {CONFIG_FILE}; it is not a sedd-jax workdir")
    config = official.config_from_dict(official.read_json(str(config_path(workdir))), str(config_path(workdir)))
    manager = create_manager(workdir, config, read_only=True)
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"{workdir}/checkpoints holds no complete checkpoint yet")
    target = models.abstract_params(models.get_model(config))
    stored = manager.item_metadata(step)["ema"]
    models.check_param_shapes(getattr(stored, "tree", stored), target, f"{workdir}/checkpoints/{step}/ema")
    ema = manager.restore(step, args=ocp.args.Composite(ema=ocp.args.StandardRestore(target)))["ema"]
    manager.close()
    return config, ema


class PreemptionWatch:
    """Turns SIGTERM (a preempted TPU VM, `kill`) into a flag the training loop polls between steps, so the
    loop saves the current step and returns instead of dying mid-write. Multi-host runs rely on JAX's
    preemption service instead (enabled by `jax.distributed.initialize()`), whose sync point makes every host
    stop at the same step."""

    def __init__(self):
        self._event = threading.Event()
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, lambda *_: self._event.set())
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def should_stop(self, manager: ocp.CheckpointManager, step: int) -> bool:
        if jax.process_count() > 1:
            return manager.reached_preemption(step)
        return self._event.is_set()
