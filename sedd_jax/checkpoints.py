"""Orbax checkpoints of a training run: save, resume, preemption, and EMA weights for sampling.

Layout of a workdir:
    workdir/config.json             the run's config (written with its first checkpoint)
    workdir/config_history.jsonl    config changes allowed on resume (learning rate, n_iters, ...)
    workdir/trainer.lock            host and pid of the trainer running in the workdir
    workdir/checkpoints/<step>/     state/ (TrainState step, params, opt_state), ema/ (EMA params),
                                    data/ (per-host grain iterator state: process_<i>-of-<n>.json)
    workdir/unusable_checkpoints/   damaged checkpoints set aside on resume (never deleted)

Checkpoints are written asynchronously under one save policy (`create_manager`). Orbax
writes each step to a temporary directory and renames it when complete, so an interrupted save never
leaves a checkpoint that looks whole. Restoring takes the target shardings of the current mesh, so a run
can resume on another mesh shape.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from sedd_jax import configs, extras, files

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
    if "://" in str(path):
        path.write_text(json.dumps(config.to_dict(), indent=2, default=str))  # object stores write whole objects
    else:
        with files.atomic_write(str(path), mode="w", hint=files.WORKDIR_SPACE_HINT) as f:
            f.write(json.dumps(config.to_dict(), indent=2, default=str))
    if allowed:
        history = path.parent / HISTORY_FILE
        lines = history.read_text().splitlines() if history.exists() else []
        lines.append(json.dumps({"step": step, "changes": {k: {"from": a, "to": b} for k, (a, b) in allowed.items()}},
                                default=str))
        history.write_text("\n".join(lines) + "\n")


def _absolute(workdir: str) -> epath.Path:
    return epath.Path(workdir if "://" in str(workdir) else os.path.abspath(workdir))


def create_manager(workdir: str, config, read_only: bool = False) -> ocp.CheckpointManager:
    """The run's checkpoint manager and its one save policy: every `training.snapshot_freq_for_preemption` and
    `training.snapshot_freq` steps, at `training.n_iters`, and when a multi-host preemption is signalled
    (`save(..., force=True)` for a single-process SIGTERM). Kept: the newest `training.keep_checkpoints` and
    every multiple of `training.snapshot_freq`."""
    if read_only:
        options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    else:
        t, policies = config.training, ocp.checkpoint_managers
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=policies.AnySavePolicy([
                policies.FixedIntervalPolicy(int(t.snapshot_freq_for_preemption)),
                policies.FixedIntervalPolicy(int(t.snapshot_freq)),
                policies.SpecificStepsPolicy({int(t.n_iters)}),
                policies.PreemptionCheckpointingPolicy()]),
            preservation_policy=policies.AnyPreservationPolicy([
                policies.LatestN(int(t.keep_checkpoints)), policies.EveryNSteps(int(t.snapshot_freq))]),
            create=True, enable_async_checkpointing=True)
    return ocp.CheckpointManager(_absolute(workdir) / CHECKPOINT_DIR, options=options,
                                 item_names=("state", "ema", "data", "fingerprint"))


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


def _split_ema(state) -> tuple[dict, Any]:
    """A TrainState as the checkpoint's two items: {"step", "params", "opt_state"} and the EMA, which is kept
    apart so that `load_ema_params` reads only the EMA."""
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    return {k: v for k, v in fields.items() if k != "ema"}, fields["ema"]


def _check_free_space(manager: ocp.CheckpointManager, step: int, state) -> None:
    """An OSError (ENOSPC) before a save that cannot fit: the arrays this process writes need more than the
    local filesystem has free (a failed asynchronous save surfaces later, noisily, and leaves partial files)."""
    directory = str(manager.directory)
    if "://" in directory:
        return
    needed = sum(shard.data.nbytes for leaf in jax.tree.leaves(state) for shard in leaf.addressable_shards
                 if shard.replica_id == 0)
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise OSError(errno.ENOSPC, f"checkpoint {step} needs ~{needed / 2**20:.1f} MiB, {free / 2**20:.1f} MiB "
                      f"free on the filesystem of {directory}")


def save(manager: ocp.CheckpointManager, step: int, state, data_iter, force: bool = False) -> bool:
    """Saves a TrainState and the data iterator (asynchronously) when the manager's policy says so, or always
    with `force`; returns whether it saves."""
    grain = extras.require("grain", "saving the data iterator with a training checkpoint")

    _check_free_space(manager, step, state)
    items, ema = _split_ema(state)
    args = ocp.args.Composite(state=ocp.args.StandardSave(items), ema=ocp.args.StandardSave(ema),
                              data=grain.checkpoint.CheckpointSave(IteratorSnapshot(data_iter)),
                              fingerprint=ocp.args.JsonSave({"arrays": np.asarray(_fingerprint(state)).tolist()}))
    return manager.save(step, args=args, force=force)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, data_iter,
            batch_sizes: tuple[int, int] | None = None):
    """The TrainState of checkpoint `step` on the shardings carried by `abstract_state` (a TrainState of
    ShapeDtypeStructs); the iterator is restored in place.

    The iterator state may come from a run with another process count: every process of a run is at the
    same global batch (sedd_jax.data.pipeline), so any process's saved state resumes every process here.
    `batch_sizes=(saved, new)` global batch sizes: the iterator resumes at the same position of the data
    stream in batches of the new size (the position must be a multiple of it)."""
    abstract_items, abstract_ema = _split_ema(abstract_state)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_items), ema=ocp.args.StandardRestore(abstract_ema)))
    iterator_state = _saved_iterator_state(epath.Path(manager.directory) / str(step) / "data")
    if batch_sizes and batch_sizes[0] != batch_sizes[1]:
        saved, new = batch_sizes
        position = iterator_state.get("next_index", 0) * saved
        if set(iterator_state) != {"next_index"} or position % new:
            raise IncompatibleCheckpointError(f"the checkpoint of step {step} is {position} sequences into the data stream (batches "
                             f"of {saved}), which is not a whole number of batches of the new training.batch_size="
                             f"{new}; choose a batch size that divides {position} (with data.num_workers=0)")
        iterator_state = {"next_index": position // new}
    data_iter.set_state(iterator_state)
    return abstract_state.replace(**restored["state"], ema=restored["ema"])


UNUSABLE_DIR = "unusable_checkpoints"


class IncompatibleCheckpointError(ValueError):
    """A readable checkpoint that this run cannot continue from (another model, optimizer layout or data
    position); unlike a damaged one it is never set aside."""


def _check_layout(manager: ocp.CheckpointManager, step: int, abstract_state) -> None:
    """IncompatibleCheckpointError when checkpoint `step` holds another model (parameter paths or shapes) or
    another optimizer-state layout than `abstract_state`; orbax's errors when its metadata cannot be read."""
    from sedd_jax import models

    directory = epath.Path(manager.directory) / str(step)
    with ocp.StandardCheckpointer() as checkpointer:
        stored = {name: checkpointer.metadata(directory / name).item_metadata for name in ("state", "ema")}
    stored = {name: getattr(tree, "tree", tree) for name, tree in stored.items()}
    for name, tree in stored.items():
        if not tree:
            raise FileNotFoundError(f"{directory / name} is missing or has no metadata")
    try:
        models.check_param_shapes(stored["ema"], abstract_state.ema, str(directory / "ema"))
        models.check_param_shapes(stored["state"]["params"], abstract_state.params, str(directory / "state"))
    except ValueError as e:
        raise IncompatibleCheckpointError(str(e)) from None
    found = len(jax.tree.leaves(stored["state"]["opt_state"], is_leaf=lambda x: hasattr(x, "shape")))
    expected = len(jax.tree.leaves(abstract_state.opt_state))
    if found != expected:
        raise IncompatibleCheckpointError(
            f"{directory} holds an optimizer state of {found} arrays where this run has {expected}: it was written "
            "with another optimizer (optim.grad_clip on or off) or another sedd-jax version. Resume with those, or "
            "start a new --workdir")


@jax.jit
def _fingerprint(tree) -> jax.Array:
    """float32[n_arrays, 2]: per array of `tree`, the sum of |x| and of x^2. Saved with each checkpoint and
    recomputed on restore: values changed on disk (flipped bytes) show, while another mesh's reduction order
    changes the sums by ~1e-6 relative. Non-finite values give non-finite sums."""
    return jnp.stack([jnp.stack([jnp.abs(x.astype(jnp.float32)).sum(), jnp.square(x.astype(jnp.float32)).sum()])
                      for x in jax.tree.leaves(tree)])


def _damage(manager: ocp.CheckpointManager, step: int, state) -> str | None:
    """Why restored `state` of checkpoint `step` must not be used, or None: non-finite arrays, or arrays that
    differ from the fingerprint saved with them (checkpoints without one are checked for finiteness only)."""
    found = np.asarray(_fingerprint(state))
    if not np.isfinite(found).all():
        return "its parameters, optimizer state or EMA are not finite"
    if not (epath.Path(manager.directory) / str(step) / "fingerprint").exists():
        return None
    saved = np.asarray(manager.restore(step, args=ocp.args.Composite(
        fingerprint=ocp.args.JsonRestore()))["fingerprint"]["arrays"], dtype=np.float64)
    if saved.shape != found.shape:
        return f"its fingerprint describes {len(saved)} arrays, it holds {len(found)}: the files changed on disk"
    changed = int((~np.isclose(found, saved, rtol=1e-4, atol=0)).any(axis=1).sum())
    if changed:
        return f"{changed} of {len(found)} arrays differ from the fingerprint saved with them: the files changed on disk"
    return None


def _restore_checked(manager, step, abstract_state, data_iter, batch_sizes):
    """(TrainState, None) when checkpoint `step` restores undamaged (finite, matching its fingerprint), else
    (None, the reason in one line). IncompatibleCheckpointError propagates."""
    try:
        _check_layout(manager, step, abstract_state)
        state = restore(manager, step, abstract_state, data_iter, batch_sizes)
    except IncompatibleCheckpointError:
        raise
    except Exception as e:  # orbax/tensorstore report damaged files with many exception types
        first_line = str(e).splitlines()[0][:300] if str(e) else ""
        return None, f"{type(e).__name__}: {first_line}"
    reason = _damage(manager, step, state)
    return (None, reason) if reason else (state, None)


def restore_newest_usable(manager: ocp.CheckpointManager, abstract_state, data_iter,
                          batch_sizes: tuple[int, int] | None = None, log=print):
    """(step, TrainState) of the newest checkpoint that restores and holds finite parameters and EMA, or
    (None, None) when there is none yet.

    A newer checkpoint that fails (unreadable, truncated, missing files, non-finite weights) is reported in one
    line and moved to workdir/unusable_checkpoints/<step>, out of the rotation (nothing is deleted); if none is
    usable, a ValueError says what to look at. A readable checkpoint of another model or optimizer layout is an
    IncompatibleCheckpointError, with nothing moved."""
    steps = sorted(manager.all_steps(), reverse=True)
    for step in steps:
        with _absl_silenced(*READ_NOTICES):
            state, reason = _restore_checked(manager, step, abstract_state, data_iter, batch_sizes)
        if state is not None:
            return step, state
        log(f"checkpoint {step} is not usable ({reason}); moving it to {UNUSABLE_DIR}/ and trying the one before")
        _set_aside(manager, step)
    if steps:
        raise ValueError(f"no usable checkpoint in {manager.directory} (tried steps {steps}; they are now in "
                         f"{UNUSABLE_DIR}/ beside it). Start a new --workdir, or restore a copy of the run")
    return None, None


def disk_full_error(workdir: str, error: BaseException) -> files.DiskFullError | None:
    """When `error` (from a training run) ran out of space: removes the unfinished saves' temporary
    directories from workdir/checkpoints (process 0; the workdir lock makes them this run's) and returns a
    one-line DiskFullError naming the newest complete checkpoint. None for any other error."""
    if not files.is_disk_full(error):
        return None
    directory = _absolute(workdir) / CHECKPOINT_DIR
    if jax.process_index() == 0 and directory.exists():
        for partial in directory.glob("*.orbax-checkpoint-tmp*"):
            if partial.is_dir():
                partial.rmtree()
            else:
                partial.unlink()
    newest = max((int(p.name) for p in directory.iterdir() if p.name.isdigit()), default=None) \
        if directory.exists() else None
    hint = (f"the newest complete checkpoint is step {newest}; free space there (or lower "
            "--config.training.keep_checkpoints) and rerun to resume from it")
    return files.DiskFullError(files.disk_full_message(f"{directory}/", errno.ENOSPC, hint, str(directory)),
                               errno.ENOSPC, str(directory))


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
    from sedd_jax import official

    if not config_path(workdir).exists():
        raise FileNotFoundError(f"{workdir} has checkpoints/ but no {CONFIG_FILE}; it is not a sedd-jax workdir")
    config = official.config_from_dict(official.read_json(str(config_path(workdir))), str(config_path(workdir)))
    with _absl_silenced(*READ_NOTICES):
        return config, _read_ema(workdir, config)


# What orbax logs (as warnings) on every read of a workdir: the read-only manager it was asked for, and an item
# (state, ema) whose layout is read alone (its metadata file sits one level up). Nothing is wrong in either case.
READ_NOTICES = ("Given directory is read only", "Metadata file does not exist")


class _DropPrefixes(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


@contextlib.contextmanager
def _absl_silenced(*prefixes: str):
    """Within the block, absl log records (orbax logs through absl) starting with any of `prefixes` are dropped."""
    drop = _DropPrefixes(prefixes)
    logger = logging.getLogger("absl")
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _read_ema(workdir: str, config):
    from sedd_jax import models

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
    return ema


@contextlib.contextmanager
def exit_on_sigterm(when: str):
    """Within the block, SIGTERM (in the main thread) prints one line and raises SystemExit(143), so the code
    running unwinds through its `finally` clauses (temporary files removed, the workdir lock released).

    Python drops an exception raised where it cannot propagate (a signal that lands in a garbage-collection
    callback or a `__del__`); such a SIGTERM raises again when the block ends."""
    received = []

    def stop(signum, frame):
        if not received:
            print(f"stopped by SIGTERM {when}", flush=True)
        received.append(signum)
        raise SystemExit(128 + signal.SIGTERM)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
    if received:  # the block ended normally: the SystemExit was dropped on the way
        raise SystemExit(128 + signal.SIGTERM)


class PreemptionWatch:
    """Turns SIGTERM (a preempted TPU VM, `kill`) and, in a single-process run, the first Ctrl-C (SIGINT) into
    a flag the training loop polls between steps, so the loop saves the current step and returns instead of
    dying mid-write; a second Ctrl-C aborts at once. Multi-host runs rely on JAX's preemption service instead
    (enabled by `jax.distributed.initialize()`), whose sync point makes every host stop at the same step."""

    def __init__(self):
        self._event = threading.Event()
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            signals = (signal.SIGTERM, signal.SIGINT) if jax.process_count() == 1 else (signal.SIGTERM,)
            self._previous = {sig: signal.signal(sig, self._handle) for sig in signals}
        return self

    def _handle(self, signum, frame):
        if signum == signal.SIGINT:
            if self._event.is_set():
                raise KeyboardInterrupt
            print("Ctrl-C: saving the current step, then stopping (Ctrl-C again aborts without saving)",
                  flush=True)
        self._event.set()

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def should_stop(self, manager: ocp.CheckpointManager, step: int) -> bool:
        if jax.process_count() > 1:
            return manager.reached_preemption(step)
        return self._event.is_set()
