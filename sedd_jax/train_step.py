"""The train and eval steps of a config, pure and closed over with it, and their ahead-of-time compilation
with explicit shardings over the (data, fsdp, tensor) mesh (the train state donated, updated in place).
sedd_jax.train runs them; sedd_jax.compile and bench/train_step.py compile the same programs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from sedd_jax import graphs, host_memory, losses, models, noise as noise_lib, parallel
from sedd_jax.train_state import TrainState, apply_if_safe, create_optimizer, ema_decay, learning_rate_schedule


# The narrowest model.hidden_size that training.xla_cpu_emitters="auto" compiles with XLA's legacy CPU emitters.
LEGACY_EMITTERS_MIN_WIDTH = 128


def cpu_compiler_options(config) -> dict:
    """XLA options for compiling a config's train and eval steps on CPUs (`training.xla_cpu_emitters`).

    XLA's CPU fusion emitters (its default) hold ~540 MiB of compiler memory for issue 8's benchmark step, which
    sets a first run's peak memory; its legacy emitters (`xla_cpu_use_fusion_emitters=False`) hold ~120 MiB,
    compile about as fast from width 128 up (SEDD-small at 2 x 256: 1.3x longer) and run the step as fast, but
    compile models of width 32 2.5-5.7x longer (bench/README.md). "auto" takes the legacy emitters from
    `LEGACY_EMITTERS_MIN_WIDTH`. Returns `compiler_options` for `jax.stages.Lowered.compile`."""
    choice = config.training.get("xla_cpu_emitters", "auto")
    if choice == "auto":
        choice = "legacy" if int(config.model.hidden_size) >= LEGACY_EMITTERS_MIN_WIDTH else "fusion"
    return {"xla_cpu_use_fusion_emitters": False} if choice == "legacy" else {}


def _compile(lowered, mesh, config):
    """`lowered.compile()`, on CPU meshes with `cpu_compiler_options(config)`; there it then hands the compiler's
    freed memory back to the operating system (host_memory), which otherwise sets the process's peak: the step's own
    buffers come on top of it."""
    if mesh.devices.flat[0].platform != "cpu":
        return lowered.compile()
    compiled = lowered.compile(compiler_options=cpu_compiler_options(config))
    host_memory.release_freed_memory()
    return compiled


def masked_position_chunks(config, graph: graphs.Graph) -> int | None:
    """training.position_chunks where the train and eval steps run the network's last layers and the loss at
    masked positions only (the absorbing graph, training.masked_positions_only), else None."""
    if graph.absorb and config.training.get("masked_positions_only", True):
        return int(config.training.get("position_chunks", 16))
    return None


def training_components(config):
    """(graph, noise, model, optimizer, loss_fn) of a training config: what the train step is built from. The
    absorbing graph's loss is `losses.MaskedPositionsLoss` (the last layers at masked positions only) unless
    `training.masked_positions_only` is off."""
    graph = graphs.get_graph(config.graph.type, config.tokens)
    noise = noise_lib.from_config(config)
    model = models.get_model(config, config.model.compute_dtype)
    chunks = masked_position_chunks(config, graph)
    if chunks:
        loss_fn = losses.MaskedPositionsLoss(noise, graph, config.training.sampling_eps, chunks)
    else:
        loss_fn = losses.get_loss_fn(noise, graph, train=True, sampling_eps=config.training.sampling_eps)
    return graph, noise, model, create_optimizer(config), loss_fn


def make_train_step(config, model, loss_fn, optimizer, mesh):
    """train_step(state, batch int32[B, L], key) -> (state, metrics) for one optimizer update (applied, or
    skipped when unsafe: see train_state.apply_if_safe)."""
    accum, length = int(config.training.accum), int(config.model.length)
    max_update_ratio = float(config.training.get("max_update_ratio", 1.0))
    micro_sharding = NamedSharding(mesh, PartitionSpec(None, parallel.BATCH_AXES))

    def micro_loss(params, x0, key):
        loss_key, dropout_key = jax.random.split(key)
        log_score_fn = lambda x, sigma: model.apply({"params": params}, x, sigma, train=True,
                                                    rngs={"dropout": dropout_key})
        return loss_fn(log_score_fn, loss_key, x0).mean()

    def micro_loss_and_grad_at_masked_positions(params, x0, key):
        loss_key, dropout_key = jax.random.split(key)
        trunk_fn, head_fn = models.trunk_and_head(model, train=True, dropout_key=dropout_key)
        return loss_fn(trunk_fn, head_fn, model.head_param_names, params, loss_key, x0, groups)

    groups = parallel.batch_shards(mesh)
    grad_fn = (micro_loss_and_grad_at_masked_positions if isinstance(loss_fn, losses.MaskedPositionsLoss)
               else jax.value_and_grad(micro_loss))

    def train_step(state: TrainState, batch: jax.Array, key: jax.Array):
        key = jax.random.fold_in(key, state.step)
        # Micro-batch a takes rows a, a + accum, ...: every device keeps an equal share of every micro-batch.
        micro = batch.reshape(batch.shape[0] // accum, accum, batch.shape[1]).swapaxes(0, 1)
        micro = jax.lax.with_sharding_constraint(micro, micro_sharding)

        def accumulate(carry, inputs):
            loss_sum, grad_sum = carry
            x0, index = inputs
            loss, grads = grad_fn(state.params, x0, jax.random.fold_in(key, index))
            return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (loss, grads), _ = jax.lax.scan(accumulate, (jnp.zeros((), jnp.float32), zeros),
                                        (micro, jnp.arange(accum)))
        loss, grads = loss / accum, jax.tree.map(lambda g: g / accum, grads)
        params, opt_state, skipped = apply_if_safe(optimizer, max_update_ratio, grads, state.opt_state, state.params,
                                                   loss)
        decay = ema_decay(config, state.step + 1)
        ema = jax.tree.map(lambda e, p: e - (1 - decay) * (e - p), state.ema, params)
        metrics = dict(train_loss=loss / length, grad_norm=optax.tree.norm(grads),
                       learning_rate=learning_rate_schedule(config)(state.step),
                       update_skipped=skipped,
                       skipped_updates=opt_state.total, consecutive_skipped=opt_state.consecutive)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema=ema), metrics

    return train_step


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
    with jax.set_mesh(mesh):  # the mesh that kernels run per shard need (splash attention's shard_map)
        lowered = train_step.lower(abstract_state, batch_shape, key_shape)
    return _compile(lowered, mesh, config)


def compile_eval_step(config, model, mesh, abstract_state: TrainState):
    """The trainer's eval: `eval_step(ema_params, blocks int32[B, L], ids int32[B], key) -> float32[B, K]`, K =
    eval.mc_samples draws of the DWDSE loss (nats per block) of each block in eval mode on a `eval.t_grid` grid
    of times (sedd_jax.likelihood, the evaluator's code), block b's randomness fold_in(key, ids[b]). Jitted
    with the EMA's shardings and the batch split like the train batch, compiled for B = eval.batch_size; the
    draws come back replicated. Summarise them with `likelihood.summarize`."""
    from sedd_jax import likelihood

    graph = graphs.get_graph(config.graph.type, config.tokens)
    chunks = masked_position_chunks(config, graph)
    draws = likelihood.draw_losses(
        lambda params, x, sigma: model.apply({"params": params}, x, sigma, train=False),
        graph, noise_lib.from_config(config), int(config.eval.mc_samples), t_grid=config.eval.t_grid,
        sampling_eps=float(config.training.sampling_eps),
        trunk_and_head=models.trunk_and_head(model) if chunks else None, groups=parallel.batch_shards(mesh),
        position_chunks=chunks or 1)
    batch_sharding, replicated = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    ema_shardings = jax.tree.map(lambda a: a.sharding, abstract_state.ema)
    eval_step = jax.jit(draws, in_shardings=(ema_shardings, batch_sharding, batch_sharding, replicated),
                        out_shardings=replicated)
    batch = int(config.eval.batch_size)
    key = jax.random.key(0)
    with jax.set_mesh(mesh):
        lowered = eval_step.lower(
            abstract_state.ema,
            jax.ShapeDtypeStruct((batch, int(config.model.length)), jnp.int32, sharding=batch_sharding),
            jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=batch_sharding),
            jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated))
    return _compile(lowered, mesh, config)
