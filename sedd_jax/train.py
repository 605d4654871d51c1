"""The training loop: `train_and_evaluate(config, workdir)`.

One jit-compiled train step with explicit in/out shardings and donated state over the (data, fsdp, tensor)
mesh, compiled ahead of the loop; AdamW with linear warm-up and global-norm clipping, EMA with the
reference's (1 + n) / (10 + n) warm-up, gradient accumulation, non-finite updates skipped and counted
(reference §4.3-4.6). The loss, step and eval functions are pure and closed over with the config; side
effects (data, checkpoints, metrics, samples) live only in the loop.

Workdir outputs: checkpoints/ (see sedd_jax.checkpoints), metrics.jsonl (one JSON object per logged step:
step, train_loss in nats per token, and at eval steps eval_loss and eval_ppl_bound), TensorBoard events,
samples/iter_<step>.txt.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec

from sedd_jax import checkpoints, configs, graphs, losses, models, noise as noise_lib, parallel

TrainState = dict  # {"step": int32[], "params", "opt_state", "ema", "skipped": int32[]}


# ------------------------------------------------------------------------------------- pure pieces

def learning_rate_schedule(config):
    """lr_k = lr * min((k + 1) / warmup, 1) for the k-th update (0-based), constant afterwards (§4.4)."""
    lr, warmup = float(config.optim.lr), max(int(config.optim.warmup), 1)
    return lambda count: lr * jnp.minimum((count + 1) / warmup, 1.0)


def create_optimizer(config) -> optax.GradientTransformation:
    o = config.optim
    adamw = optax.adamw(learning_rate_schedule(config), b1=o.beta1, b2=o.beta2, eps=o.eps,
                        weight_decay=o.weight_decay)
    return optax.chain(optax.clip_by_global_norm(o.grad_clip), adamw) if o.grad_clip > 0 else adamw


def ema_decay(config, num_updates: jax.Array) -> jax.Array:
    """min(ema, (1 + n) / (10 + n)) with n the number of updates including this one (first: 2/11)."""
    n = num_updates.astype(jnp.float32)
    return jnp.minimum(config.training.ema, (1 + n) / (10 + n))


def training_components(config):
    """(graph, noise, model, optimizer, loss_fn) of a training config: what the train step is built from."""
    graph = graphs.get_graph(config.graph.type, config.tokens)
    noise = noise_lib.from_config(config)
    model = models.get_model(config, config.model.compute_dtype)
    loss_fn = losses.get_loss_fn(noise, graph, train=True, sampling_eps=config.training.sampling_eps)
    return graph, noise, model, create_optimizer(config), loss_fn


def make_train_step(config, model, loss_fn, optimizer, mesh):
    """train_step(state, batch int32[B, L], key) -> (state, metrics) for one optimizer update."""
    accum, length = int(config.training.accum), int(config.model.length)
    max_update_ratio = float(config.training.get("max_update_ratio", 1.0))
    micro_sharding = NamedSharding(mesh, PartitionSpec(None, parallel.BATCH_AXES))

    def micro_loss(params, x0, key):
        loss_key, dropout_key = jax.random.split(key)
        log_score_fn = lambda x, sigma: model.apply({"params": params}, x, sigma, train=True,
                                                    rngs={"dropout": dropout_key})
        return loss_fn(log_score_fn, loss_key, x0).mean()

    grad_fn = jax.value_and_grad(micro_loss)

    def train_step(state: TrainState, batch: jax.Array, key: jax.Array):
        key = jax.random.fold_in(key, state["step"])
        params = state["params"]
        # Micro-batch a takes rows a, a + accum, ...: every device keeps an equal share of every micro-batch.
        micro = batch.reshape(batch.shape[0] // accum, accum, batch.shape[1]).swapaxes(0, 1)
        micro = jax.lax.with_sharding_constraint(micro, micro_sharding)

        def accumulate(carry, inputs):
            loss_sum, grad_sum = carry
            x0, index = inputs
            loss, grads = grad_fn(params, x0, jax.random.fold_in(key, index))
            return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        (loss, grads), _ = jax.lax.scan(accumulate, (jnp.zeros((), jnp.float32), zeros),
                                        (micro, jnp.arange(accum)))
        loss, grads = loss / accum, jax.tree.map(lambda g: g / accum, grads)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state["opt_state"], params)
        # An update is applied only when the loss, the gradients and the update are finite and the update is
        # not absurd (larger than the parameters themselves, e.g. a diverging learning rate).
        update_norm, param_norm = optax.tree.norm(updates), optax.tree.norm(params)
        finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(update_norm)
                  & (update_norm <= max_update_ratio * jnp.maximum(param_norm, 1.0)))
        keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        params = keep_if_finite(optax.apply_updates(params, updates), params)
        opt_state = keep_if_finite(opt_state, state["opt_state"])
        decay = ema_decay(config, state["step"] + 1)
        ema = jax.tree.map(lambda e, p: e - (1 - decay) * (e - p), state["ema"], params)
        new_state = dict(step=state["step"] + 1, params=params, opt_state=opt_state, ema=ema,
                         skipped=state["skipped"] + (~finite).astype(jnp.int32))
        metrics = dict(train_loss=loss / length, grad_norm=grad_norm,
                       learning_rate=learning_rate_schedule(config)(state["step"]),
                       update_skipped=(~finite).astype(jnp.int32))
        return new_state, metrics

    return train_step


def make_eval_step(config, model, loss_fn):
    """eval_step(ema_params, batch int32[B, L], key) -> mean DWDSE nats per token (eval mode)."""
    length = int(config.model.length)

    def eval_step(params, batch, key):
        log_score_fn = lambda x, sigma: model.apply({"params": params}, x, sigma, train=False)
        return loss_fn(log_score_fn, key, batch).mean() / length

    return eval_step


def train_state_layout(config, model, optimizer, mesh, init_key):
    """How the train state is built and laid out over `mesh`, before anything is allocated.

    Returns (init_state, abstract_state, state_shardings): `init_state(key) -> TrainState` (jit it with
    `out_shardings=state_shardings`), the state's `jax.ShapeDtypeStruct` tree carrying those shardings, and the
    NamedSharding tree (parameters, EMA and optimizer moments sharded by the logical-axis rules; step and
    counters replicated)."""
    dummy = (jnp.zeros((1, 2), jnp.int32), jnp.zeros((1,), jnp.float32))
    boxed = jax.eval_shape(lambda k: model.init(k, *dummy)["params"], jax.random.key(0))
    param_shardings = parallel.param_shardings(boxed, mesh, parallel.logical_rules(config))
    replicated = parallel.replicated(mesh)

    def init_state(key) -> TrainState:
        params = flax.core.meta.unbox(model.init(key, *dummy)["params"])
        return dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                    ema=jax.tree.map(jnp.copy, params), skipped=jnp.zeros((), jnp.int32))

    abstract_state = jax.eval_shape(init_state, init_key)
    state_shardings = dict(
        step=replicated, params=param_shardings, ema=param_shardings, skipped=replicated,
        opt_state=optax.tree_map_params(optimizer, lambda _, s: s, abstract_state["opt_state"], param_shardings,
                                        transform_non_params=lambda _: replicated))
    return init_state, _with_shardings(abstract_state, state_shardings), state_shardings


def compile_train_step(config, model, loss_fn, optimizer, mesh, abstract_state, state_shardings):
    """`make_train_step` jitted with explicit shardings, the state donated (updated in place), and compiled
    ahead of time for a `[training.batch_size, model.length]` int32 batch. Returns the compiled step."""
    batch_sharding, replicated = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    batch_shape = jax.ShapeDtypeStruct((config.training.batch_size, int(config.model.length)), jnp.int32,
                                       sharding=batch_sharding)
    key = jax.random.key(0)
    key_shape = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated)
    train_step = jax.jit(make_train_step(config, model, loss_fn, optimizer, mesh),
                         in_shardings=(state_shardings, batch_sharding, replicated),
                         out_shardings=(state_shardings, replicated), donate_argnums=0)
    return train_step.lower(abstract_state, batch_shape, key_shape).compile()


# --------------------------------------------------------------------------------------- the loop

def _with_shardings(tree, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def format_bytes(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def memory_summary(compiled) -> dict | None:
    """Per-device bytes of a compiled program: {"arguments", "outputs", "temporaries", "total"}, where total
    counts donated arguments once (they are updated in place). None where the backend does not say."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return dict(arguments=analysis.argument_size_in_bytes, outputs=analysis.output_size_in_bytes,
                temporaries=analysis.temp_size_in_bytes,
                total=(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                       + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes))


def _report_memory(compiled, what: str) -> None:
    memory = memory_summary(compiled)
    if memory is None:
        return
    _log(f"[{what}] per-device memory: arguments {format_bytes(memory['arguments'])}, "
         f"outputs {format_bytes(memory['outputs'])}, temporaries "
         f"{format_bytes(memory['temporaries'])}, total ~{format_bytes(memory['total'])}")
    stats = jax.local_devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    if limit and memory["total"] > limit:
        raise MemoryError(
            f"the {what} needs ~{format_bytes(memory['total'])} per device but {format_bytes(limit)} is available; "
            "shard more (--config.mesh.fsdp), accumulate (--config.training.accum) or shrink the batch; "
            "python -m sedd_jax.compile checks a config without running it")


class TrainingDivergedError(RuntimeError):
    """Too many consecutive updates were skipped (non-finite or too large): the run stopped."""


class _DivergenceWatch:
    """Counts consecutive skipped updates from the per-step flags of each log window."""

    def __init__(self, max_skipped: int, last_applied: int):
        self.max_skipped, self.last_applied = max_skipped, last_applied
        self.consecutive, self.diverged = 0, False

    def observe(self, first_step: int, skipped: list[int]) -> None:
        for step, was_skipped in enumerate(skipped, start=first_step):
            self.consecutive = self.consecutive + 1 if was_skipped else 0
            if not was_skipped:
                self.last_applied = step
        self.diverged = self.consecutive >= self.max_skipped

    def message(self, latest_checkpoint: int | None) -> str:
        return (f"training diverged: the last {self.consecutive} updates were skipped (non-finite loss, gradients "
                f"or update, or an update larger than the parameters); the last applied update was step "
                f"{self.last_applied} and the newest checkpoint is step {latest_checkpoint} (skipped updates leave "
                "the weights unchanged, so it holds finite weights). Lower --config.optim.lr or raise "
                "--config.optim.warmup and rerun to resume from it")


class _MetricsLog:
    """metrics.jsonl + TensorBoard (clu) on process 0. Cloud workdirs (gs://) cannot append to an object, so
    there the file is rewritten whole at each log (it stays small: one line per logged step)."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        from clu import metric_writers

        self._path = epath.Path(workdir) / "metrics.jsonl"
        self._append = "://" not in str(workdir)
        self._lines = [] if self._append or not self._path.exists() else self._path.read_text().splitlines()
        self._writer = metric_writers.AsyncWriter(metric_writers.SummaryWriter(str(workdir)))

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
        self._writer.write_scalars(step, {k: v for k, v in scalars.items() if k not in nonfinite})

    def close(self) -> None:
        if self.enabled:
            self._writer.flush()
            self._writer.close()


def _write_samples(workdir: str, step: int, tokens: np.ndarray, tokenizer) -> None:
    if jax.process_index() != 0:
        return
    directory = epath.Path(workdir) / "samples"
    directory.mkdir(parents=True, exist_ok=True)
    text = "".join(f"=== sample {i} ===\n{tokenizer.decode([int(t) for t in row])}\n" for i, row in enumerate(tokens))
    (directory / f"iter_{step}.txt").write_text(text)


def _snapshot_sampler(config, model, graph, noise, out_sharding):
    """jitted (ema_params, key) -> int32[sampling.batch_size, L] samples for the snapshot text files."""
    from sedd_jax import sampling

    pc_sampler = sampling.get_pc_sampler(
        graph, noise, (config.sampling.batch_size, config.model.length), config.sampling.predictor,
        config.sampling.steps, denoise=config.sampling.noise_removal)

    def sample(params, key):
        return pc_sampler(lambda x, sigma: models.exp_score(model, params, x, sigma), key)

    return jax.jit(sample, out_shardings=out_sharding)


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains (or resumes) the run in `workdir`, holding its lock (one trainer per workdir); returns the last
    logged metrics."""
    configs.validate(config)
    with checkpoints.WorkdirLock(workdir):
        return _train(config, workdir)


def _train(config, workdir: str) -> dict:
    from sedd_jax import data

    mesh = parallel.create_mesh(config)
    saved_config, allowed_changes = checkpoints.check_resumable(workdir, config)
    bundle = data.create_datasets(config, workdir)

    graph, noise, model, optimizer, loss_fn = training_components(config)
    length, t = int(config.model.length), config.training

    base_key = jax.random.key(int(config.training.seed))
    init_key, train_key, eval_key, sample_key = jax.random.split(base_key, 4)
    init_state, abstract_state, state_shardings = train_state_layout(config, model, optimizer, mesh, init_key)
    param_shardings, replicated = state_shardings["params"], parallel.replicated(mesh)

    manager = checkpoints.create_manager(workdir, config)
    saved_batch = int(saved_config.training.batch_size) if saved_config else int(t.batch_size)
    latest, saved_state, ema = checkpoints.restore_newest_usable(
        manager, {k: v for k, v in abstract_state.items() if k != "ema"}, abstract_state["ema"], bundle.train_iter,
        batch_sizes=(saved_batch, int(t.batch_size)), log=_log)
    if latest is None:
        state = jax.jit(init_state, out_shardings=state_shardings)(init_key)
        _log(f"initialised a new run in {workdir}")
    else:
        state = dict(saved_state, ema=ema)
        _log(f"resumed {workdir} from step {latest}")
        for field, (old, new) in allowed_changes.items():
            _log(f"config change on resume: {field} {old!r} -> {new!r} (recorded in {checkpoints.HISTORY_FILE})")
    sharding_report = parallel.check_sharded(state["params"], mesh)
    n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
    _log(f"model: {n_params:,} parameters; mesh {dict(mesh.shape)}; per-device parameter share "
         f"{sharding_report['ratio']:.3f}")

    batch_sharding = parallel.batch_sharding(mesh)
    key_shape = jax.ShapeDtypeStruct(train_key.shape, train_key.dtype, sharding=replicated)
    started = time.time()
    train_step = compile_train_step(config, model, loss_fn, optimizer, mesh, abstract_state, state_shardings)
    _report_memory(train_step, "train step")
    eval_step = jax.jit(make_eval_step(config, model, loss_fn),
                        in_shardings=(param_shardings, batch_sharding, replicated), out_shardings=replicated)
    eval_step = eval_step.lower(
        abstract_state["ema"],
        jax.ShapeDtypeStruct((config.eval.batch_size, length), jnp.int32, sharding=batch_sharding),
        key_shape).compile()
    _log(f"compiled train and eval steps in {time.time() - started:.1f}s")

    sampler = _snapshot_sampler(config, model, graph, noise, replicated) if t.snapshot_sampling else None

    metrics_log = _MetricsLog(workdir)
    n_iters = int(t.n_iters)
    step = int(state["step"])
    pending: list[dict] = []
    config_recorded = False
    divergence = _DivergenceWatch(int(t.get("max_skipped_updates", 20)), last_applied=step)
    window_start, window_step = time.time(), step
    last: dict = {}
    with checkpoints.PreemptionWatch() as watch:
        while step < n_iters:
            batch = parallel.global_batch(next(bundle.train_iter), mesh)
            state, metrics = train_step(state, batch, train_key)
            step += 1
            pending.append(metrics)
            scalars: dict[str, Any] = {}
            if step % t.log_freq == 0 or step == n_iters:
                fetched, pending = jax.device_get(pending), []
                skipped = [int(m.pop("update_skipped")) for m in fetched]
                divergence.observe(step - len(fetched) + 1, skipped)
                scalars.update({k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]})
                scalars["skipped_updates"] = int(state["skipped"])
                elapsed = time.time() - window_start
                steps_per_s = (step - window_step) / max(elapsed, 1e-9)
                scalars["steps_per_sec"] = steps_per_s
                scalars["tokens_per_sec"] = steps_per_s * t.batch_size * length
                window_start, window_step = time.time(), step
                eta = (n_iters - step) / max(steps_per_s, 1e-9)
                _log(f"step {step}/{n_iters} | train_loss {scalars['train_loss']:.4f} nats/token | "
                     f"{steps_per_s:.2f} steps/s | {scalars['tokens_per_sec']:,.0f} tokens/s | "
                     f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}"
                     + (f" | skipped {sum(skipped)} of {len(skipped)} updates (non-finite or too large)"
                        if any(skipped) else ""))
            if step % t.eval_freq == 0 or step == n_iters:
                eval_batch = parallel.global_batch(next(bundle.eval_iter), mesh)
                eval_loss = float(eval_step(state["ema"], eval_batch, jax.random.fold_in(eval_key, step)))
                scalars.update(eval_loss=eval_loss,
                               eval_ppl_bound=math.exp(eval_loss) if eval_loss < 700 else math.inf)
                _log(f"step {step} | eval_loss {eval_loss:.4f} nats/token | perplexity <= "
                     f"{scalars['eval_ppl_bound']:.2f}")
            if scalars:
                metrics_log.write(step, scalars)
                last = {"step": step, **scalars}
            if divergence.diverged:
                manager.wait_until_finished()
                raise TrainingDivergedError(divergence.message(manager.latest_step()))
            is_snapshot = step % t.snapshot_freq == 0 or step == n_iters
            stopping = watch.should_stop(manager, step)
            if is_snapshot or stopping or manager.should_save(step):
                if not config_recorded:
                    checkpoints.record_config(workdir, config, step, allowed_changes)
                    config_recorded = True
                checkpoints.save(manager, step, {k: v for k, v in state.items() if k != "ema"}, state["ema"],
                                 checkpoints.IteratorSnapshot(bundle.train_iter), force=True)
            if is_snapshot and sampler is not None:
                tokens = np.asarray(sampler(state["ema"], jax.random.fold_in(sample_key, step)))
                _write_samples(workdir, step, tokens, bundle.tokenizer)
            if stopping:
                _log(f"preemption signal: saved step {step}, exiting")
                break
    manager.wait_until_finished()
    manager.close()
    metrics_log.close()
    return last
