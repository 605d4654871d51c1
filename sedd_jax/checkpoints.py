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

import contextlib
import json
import os
import signal
import socket
import threading
import time
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from sedd_jax import configs

CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"
CHECKPOINT_DIR = "checkpoints"


def config_path(workdir: str) -> epath.Path:
    """workdir/config.json; workdirs may be local paths or cloud URLs (gs://...)."""
    return epath.Path(workdir) / CONFIG_FILE


def check_resumable(workdir: str, config) -> tuple[ml_collections.ConfigDict | None, dict]:
    """(saved config or None, allowed changes) for resuming `workdir` with `config`. A change to a field that
    fixes what the weights mean (configs.MEANING_FIELDS: graph, noise, model, tokens, tokenizer, dataset) is
    a ValueError naming the fields; nothing is touched."""
    path = config_path(workdir)
    if not path.exists():
        return None, {}
    saved = ml_collections.ConfigDict(json.loads(path.read_text()))
    refused, allowed = configs.config_changes(saved, config)
    if refused:
        details = "; ".join(f"{k}: workdir has {a!r}, config has {b!r}" for k, (a, b) in refused.items())
        raise ValueError(f"{workdir} holds a run that cannot continue with this config ({details}): these fields "
                         "change what the weights mean. Use a new --workdir, or the workdir's own values")
    return saved, allowed


def record_config(workdir: str, config, step: int, allowed: dict) -> None:
    """Process 0, with a run's first checkpoint: writes workdir/config.json (atomically) and appends the
    allowed changes since the previous config, if any, to workdir/config_history.jsonl."""
    if jax.process_index() != 0:
        return
    path = config_path(workdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(config.to_dict(), indent=2, default=str))
    tmp.replace(path)
    if allowed:
        history = path.parent / HISTORY_FILE
        lines = history.read_text().splitlines() if history.exists() else []
        lines.append(json.dumps({"step": step, "changes": {k: {"from": a, "to": b} for k, (a, b) in allowed.items()}},
                                default=str))
        history.write_text("\n".join(lines) + "\n")


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


LOCK_FILE = "trainer.lock"


class WorkdirLock:
    """One trainer per workdir: `workdir/trainer.lock` holds the owner's host, pid and start time while it runs.

    A second trainer is refused with a ValueError naming the owner; a lock whose owner has died (same host,
    no such process) is taken over. Process 0 of a run holds it. Cloud workdirs (gs://) have no atomic create,
    so there the lock is not taken."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self.enabled = jax.process_index() == 0 and "://" not in str(workdir)
        self.held = False

    def __enter__(self):
        if not self.enabled:
            return self
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and self._alive(owner):
                    raise ValueError(
                        f"{os.path.dirname(self.path)} is in use by another trainer (pid {owner['pid']} on "
                        f"{owner['host']} since {owner.get('since', '?')}); stop it first, or use another --workdir. "
                        f"If that trainer is gone, delete {self.path}") from None
                print(f"taking over {self.path} from a trainer that is gone ({owner})", flush=True)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise ValueError(f"could not take {self.path}: other trainers keep creating it")

    def _owner(self) -> dict | None:
        try:
            with open(self.path) as f:
                owner = json.load(f)
            return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None
        except (OSError, ValueError):
            return None

    @staticmethod
    def _alive(owner: dict) -> bool:
        if owner.get("host") != socket.gethostname():
            return True  # cannot tell from here
        try:
            os.kill(owner["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def __exit__(self, *exc):
        if self.held and (self._owner() or {}).get("pid") == os.getpid():
            os.remove(self.path)
        self.held = False


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


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: dict, abstract_ema: Any, data_iter,
            batch_sizes: tuple[int, int] | None = None):
    """Restores state and EMA onto the shardings carried by the abstract trees, and the iterator in place.

    The iterator state may come from a run with another process count: every process of a run is at the
    same global batch (sedd_jax.data.pipeline), so any process's saved state resumes every process here.
    `batch_sizes=(saved, new)` global batch sizes: the iterator resumes at the same position of the data
    stream in batches of the new size (the position must be a multiple of it)."""
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), ema=ocp.args.StandardRestore(abstract_ema)))
    iterator_state = _saved_iterator_state(epath.Path(manager.directory) / str(step) / "data")
    if batch_sizes and batch_sizes[0] != batch_sizes[1]:
        saved, new = batch_sizes
        position = iterator_state.get("next_index", 0) * saved
        if set(iterator_state) != {"next_index"} or position % new:
            raise ValueError(f"the checkpoint of step {step} is {position} sequences into the data stream (batches "
                             f"of {saved}), which is not a whole number of batches of the new training.batch_size="
                             f"{new}; choose a batch size that divides {position} (with data.num_workers=0)")
        iterator_state = {"next_index": position // new}
    data_iter.set_state(iterator_state)
    return restored["state"], restored["ema"]


UNUSABLE_DIR = "unusable_checkpoints"


def restore_newest_usable(manager: ocp.CheckpointManager, abstract_state: dict, abstract_ema: Any, data_iter,
                          batch_sizes: tuple[int, int] | None = None, log=print):
    """(step, state, ema) of the newest checkpoint that restores and holds finite parameters and EMA, or
    (None, None, None) when there is none yet. A newer checkpoint that fails (unreadable, truncated, missing
    files, non-finite weights) is reported in one line and moved to workdir/unusable_checkpoints/<step>, out
    of the rotation (nothing is deleted); if none is usable, a ValueError says what to look at."""
    import jax.numpy as jnp

    steps = sorted(manager.all_steps(), reverse=True)
    for step in steps:
        try:
            state, ema = restore(manager, step, abstract_state, abstract_ema, data_iter, batch_sizes)
            if not all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves((state["params"], ema))):
                raise ValueError("its parameters or EMA are not finite")
            return step, state, ema
        except ValueError as e:
            if "not a whole number of batches" in str(e):
                raise
            reason = str(e).splitlines()[0][:300]
        except Exception as e:  # orbax/tensorstore report damaged files with many exception types
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        log(f"checkpoint {step} is not usable ({reason}); moving it to {UNUSABLE_DIR}/ and trying the one before")
        _set_aside(manager, step)
    if steps:
        raise ValueError(f"no usable checkpoint in {manager.directory} (tried steps {steps}; they are now in "
                         f"{UNUSABLE_DIR}/ beside it). Start a new --workdir, or restore a copy of the run")
    return None, None, None


def _set_aside(manager: ocp.CheckpointManager, step: int) -> None:
    source = epath.Path(manager.directory) / str(step)
    target = epath.Path(manager.directory).parent / UNUSABLE_DIR
    if jax.process_index() == 0:
        target.mkdir(parents=True, exist_ok=True)
        name = str(step)
        while (target / name).exists():
            name += "+"
        source.rename(target / name)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
    manager.reload()


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
    ema_path = epath.Path(manager.directory) / str(step) / "ema"
    with ocp.StandardCheckpointer() as checkpointer:
        stored = checkpointer.metadata(ema_path).item_metadata
    models.check_param_shapes(getattr(stored, "tree", stored), target, str(ema_path))
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
