"""The training loop: `train_and_evaluate(config, workdir)` = `setup` (compiled steps, shardings, data,
restored state, checkpoint manager) then `run` (the loop).

The steps are pure (sedd_jax.train_step), and so are the optimizer, EMA and skipped updates
(sedd_jax.train_state); side effects (data, checkpoints, metrics, samples) live only in `run`.

Workdir outputs: checkpoints/ and config.json (see sedd_jax.checkpoints), metrics.jsonl, TensorBoard events
(scalars, and the snapshot samples as text) and train.log (the console lines, time-stamped; see
sedd_jax.progress), samples/iter_<step>.txt, and with training.profile_steps a profile in plugins/profile/.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from sedd_jax import checkpoints, configs, flops, graphs, host_memory, likelihood, models, parallel, progress
from sedd_jax.train_state import TrainState, train_state_layout
from sedd_jax.train_step import compile_eval_step, compile_train_step, training_components


class TrainingDivergedError(RuntimeError):
    """Too many consecutive updates were skipped (non-finite or too large): the run stopped."""


def _snapshot_sampler(config, model, graph, noise, out_sharding):
    """jitted (ema_params, key) -> int32[sampling.batch_size, L] samples for the snapshot text files."""
    from sedd_jax import sampling

    pc_sampler = sampling.get_pc_sampler(
        graph, noise, (config.sampling.batch_size, config.model.length), config.sampling.predictor,
        config.sampling.steps, denoise=config.sampling.noise_removal,
        skip_unchanged=(not models.time_conditioning(config.model)
                        and sampling.skipping_pays(config.sampling.steps, config.model.length)))

    def sample(params, key):
        return pc_sampler(lambda x, sigma: models.exp_score(model, params, x, sigma), key)

    return jax.jit(sample, out_shardings=out_sharding)


@dataclasses.dataclass
class Trainer:
    """What `setup` builds and `run` runs."""
    config: Any
    workdir: str
    mesh: jax.sharding.Mesh
    state: TrainState                 # initialised, or restored from the newest usable checkpoint
    train_step: Callable | None       # compiled (state, batch int32[B, L], key) -> (state, metrics); None: done
    eval_step: Callable | None        # compiled (ema params, blocks, ids, key) -> DWDSE draws float32[B_eval, K]
    eval_blocks: jax.Array            # int32[eval.batch_size, L]: the held-out blocks of every eval (fixed)
    sampler: Callable | None          # jitted (ema params, key) -> int32[sampling.batch_size, L]; None: no snapshots
    data: Any                         # sedd_jax.data bundle: train_iter, eval_iter, tokenizer
    manager: ocp.CheckpointManager
    keys: dict                        # {"train", "eval", "sample"}: PRNG keys of the run
    config_changes: dict = dataclasses.field(default_factory=dict)   # allowed changes since the saved config


def setup(config, workdir: str) -> Trainer:
    """Checks the workdir, builds the data, the mesh and the state (restored when the workdir has a usable
    checkpoint), and compiles the steps. Nothing is written to the workdir but data caches."""
    from sedd_jax import data

    configs.validate(config)
    mesh = parallel.create_mesh(config)
    saved_config, changes = checkpoints.check_resumable(workdir, config)
    bundle = data.create_datasets(config, workdir)
    graph, noise, model, optimizer, loss_fn = training_components(config)
    init_key, train_key, eval_key, sample_key = jax.random.split(jax.random.key(int(config.training.seed)), 4)
    init_state, abstract_state, state_shardings = train_state_layout(config, model, optimizer, mesh, init_key)

    manager = checkpoints.create_manager(workdir, config)
    batch_size = int(config.training.batch_size)
    saved_batch_size = int(saved_config.training.batch_size) if saved_config else batch_size
    resumed_from, state = checkpoints.restore_newest_usable(manager, abstract_state, bundle.train_iter,
                                                            (saved_batch_size, batch_size), log=progress.log)
    if state is None:
        state = jax.jit(init_state, out_shardings=state_shardings)(init_key)
        progress.log(f"initialised a new run in {workdir}")
    else:
        progress.log(f"resumed {workdir} from step {resumed_from}")
        for field, (old, new) in changes.items():
            progress.log(f"config change on resume: {field} {old!r} -> {new!r} (recorded in "
                         f"{checkpoints.HISTORY_FILE})")
    share = parallel.check_sharded(state.params, mesh)["ratio"]
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    progress.log(f"model: {n_params:,} parameters; mesh {dict(mesh.shape)}; per-device parameter share {share:.3f}")

    train_step = eval_step = sampler = None
    if int(state.step) >= int(config.training.n_iters):     # nothing to do: say so instead of compiling
        progress.log(f"{workdir} is already at step {int(state.step)} of training.n_iters={config.training.n_iters}; "
                     "raise --config.training.n_iters to train further")
    else:
        started = time.time()
        train_step = compile_train_step(config, model, loss_fn, optimizer, mesh, abstract_state, state_shardings)
        progress.report_memory(train_step, "train step")
        eval_step = compile_eval_step(config, model, mesh, abstract_state)
        progress.log(f"compiled train and eval steps in {time.time() - started:.1f}s")
        if config.training.snapshot_sampling:
            sampler = _snapshot_sampler(config, model, graph, noise, parallel.replicated(mesh))
    eval_blocks = parallel.global_batch(next(bundle.eval_iter), mesh)       # the first eval batch, for good
    return Trainer(config, workdir, mesh, state, train_step, eval_step, eval_blocks, sampler, bundle, manager,
                   dict(train=train_key, eval=eval_key, sample=sample_key), changes)


def _evaluate(trainer: Trainer, state: TrainState, step: int) -> dict:
    """The DWDSE bound of the EMA on the fixed eval blocks, with the same draws (key) at every eval, so the
    curve compares steps, not samples: eval_loss (nats/token), its 95% Monte-Carlo half-width, eval_ppl_bound."""
    config = trainer.config
    ids = jax.make_array_from_callback(trainer.eval_blocks.shape[:1], parallel.batch_sharding(trainer.mesh),
                                       lambda index: np.arange(trainer.eval_blocks.shape[0], dtype=np.int32)[index])
    draws = np.asarray(trainer.eval_step(state.ema, trainer.eval_blocks, ids, trainer.keys["eval"]))
    summary = likelihood.summarize(draws, int(config.model.length), config.eval.t_grid)
    eval_loss, half_width = summary["nats_per_token"], 1.96 * summary["mc_stderr_nats_per_token"]
    bound = math.exp(eval_loss) if eval_loss < 700 else math.inf
    progress.log(f"step {step} | eval_loss {eval_loss:.4f} +- {half_width:.4f} nats/token (95%, "
                 f"{draws.shape[1]} draws x {draws.shape[0]} blocks) | perplexity <= {bound:.2f}")
    return dict(eval_loss=eval_loss, eval_loss_ci95=half_width, eval_ppl_bound=bound)


def _divergence_message(step: int, consecutive: int, newest_checkpoint: int | None) -> str:
    return (f"training diverged: the last {consecutive} updates were skipped (non-finite loss, gradients or "
            f"update, or an update larger than the parameters); the last applied update was step "
            f"{step - consecutive} and the newest checkpoint is step {newest_checkpoint} (skipped updates leave "
            "the weights unchanged, so it holds finite weights). Lower --config.optim.lr or raise "
            "--config.optim.warmup and rerun to resume from it")


def run(trainer: Trainer) -> dict:
    """Trains from `trainer.state` to `training.n_iters`, logging, evaluating, saving and sampling on the
    config's schedules; stops early (after saving) on SIGTERM or Ctrl-C. Returns the last logged metrics."""
    t, manager = trainer.config.training, trainer.manager
    n_iters, step, state = int(t.n_iters), int(trainer.state.step), trainer.state
    metrics_log = progress.MetricsLog(trainer.workdir, resumed_at=step)
    config, devices = trainer.config, trainer.mesh.devices
    tokens_per_step = int(t.batch_size) * int(config.model.length)
    vocab_size = graphs.get_graph(config.graph.type, config.tokens).dim
    peak = flops.peak_flops(devices.flat[0].device_kind, config.model.compute_dtype)   # None on CPUs: no MFU
    report = progress.TrainProgress(
        every_steps=int(t.log_freq), num_steps=n_iters, start_step=step, tokens_per_step=tokens_per_step,
        flops_per_step=flops.train_flops_per_token(config, vocab_size) * tokens_per_step,
        peak_flops=None if peak is None else peak * devices.size)
    profile = progress.StepProfile(trainer.workdir, first=step + int(t.get("profile_skip", 10)),
                                   count=int(t.get("profile_steps", 0)))
    config_recorded, last = False, {}
    # On CPUs each train step reuses the memory the previous one freed (host_memory); the evals, checkpoints and
    # samples between them run other programs, so they start by handing it back, as the end of the run does.
    on_cpu = trainer.mesh.devices.flat[0].platform == "cpu"
    reuse_step_memory = lambda enabled: on_cpu and host_memory.reuse_freed_memory(enabled)
    try:
        with checkpoints.PreemptionWatch() as watch:
            while step < n_iters:
                batch = parallel.global_batch(next(trainer.data.train_iter), trainer.mesh)
                reuse_step_memory(True)
                with profile.step(step + 1):
                    state, metrics = trainer.train_step(state, batch, trainer.keys["train"])
                step += 1
                profile.after(step, metrics)
                scalars = dict(report(step, metrics))
                if step % t.eval_freq == 0 or step == n_iters:
                    reuse_step_memory(False)
                    scalars.update(_evaluate(trainer, state, step))
                if scalars:
                    metrics_log.write(step, scalars)
                    last = {"step": step, **scalars}
                if scalars.get("consecutive_skipped", 0) >= int(t.get("max_skipped_updates", 20)):
                    manager.wait_until_finished()
                    raise TrainingDivergedError(_divergence_message(step, scalars["consecutive_skipped"],
                                                                    manager.latest_step()))
                stopping = watch.should_stop(manager, step)
                if stopping or manager.should_save(step):
                    reuse_step_memory(False)
                    if not config_recorded:
                        checkpoints.record_config(trainer.workdir, trainer.config, step, trainer.config_changes)
                        config_recorded = True
                    checkpoints.save(manager, step, state, trainer.data.train_iter, force=True)
                if trainer.sampler is not None and (step % t.snapshot_freq == 0 or step == n_iters):
                    reuse_step_memory(False)
                    tokens = np.asarray(trainer.sampler(state.ema, jax.random.fold_in(trainer.keys["sample"], step)))
                    progress.write_samples(trainer.workdir, step, tokens, trainer.data.tokenizer, metrics_log)
                if stopping:
                    progress.log(f"stop signal (SIGTERM or Ctrl-C): saved step {step}; rerun the same command to "
                                 "resume")
                    break
        manager.wait_until_finished()
        if step == n_iters and trainer.train_step is not None:
            progress.log(f"finished step {step}: checkpoints in {manager.directory}, metrics in "
                         f"{trainer.workdir}/metrics.jsonl (and TensorBoard events), samples in {trainer.workdir}/samples")
    finally:
        profile.stop()
        reuse_step_memory(False)
        manager.close()
        metrics_log.close()
    return last


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains (or resumes) the run in `workdir`, holding its lock (one trainer per workdir); returns the last
    logged metrics. A SIGTERM before the first step exits (status 143) with temporary files removed."""
    configs.validate(config)
    with checkpoints.WorkdirLock(workdir), progress.log_file(workdir):
        progress.log(f"sedd-jax training in {workdir} (this log: {workdir}/{progress.LOG_FILE})")
        progress.log("\n".join(progress.config_lines(config)))
        with checkpoints.exit_on_sigterm("before the first step; nothing to save"):
            trainer = setup(config, workdir)
        try:
            return run(trainer)
        except Exception as e:
            disk_full = checkpoints.disk_full_error(workdir, e)
            if disk_full is None:
                raise
            raise disk_full from e
