"""The SEDD score network (reference §1): a diffusion transformer with rotary attention and adaLN.

`SEDD(...).apply({"params": params}, indices, sigma, train=False)` maps tokens `[B, L] int32` and total noise
`[B] float32` to the LOG concrete score `[B, L, V]` (V = graph.dim), with the entry at the current token set
to 0. Dtype of the output: `compute_dtype`. `method=SEDD.trunk` and then `method=SEDD.head` compute the same
at chosen positions only, running the last block's feed-forward half and the output layer there alone (the
absorbing loss of the trainer and of the likelihood evaluation, `losses.MaskedPositionsLoss`; `trunk_and_head`
gives both as functions of the parameters).

Precision (`compute_dtype`):
  * "float32": no casts anywhere; exact parity with the reference run in float32.
  * "bfloat16": the reference's autocast policy. Parameters stay float32; every Dense casts its inputs and
    kernel to bf16 and returns bf16 (float32 accumulation on GPU/TPU); LayerNorm, the adaLN modulation and
    the residual stream stay float32; attention runs on bf16 q/k/v; rotary cos/sin are rounded to bf16, the
    rotation is computed in float32 and rounded to bf16; the output post-processing is in bf16. The backward
    pass multiplies in bf16 too (the output layer's through `_low_precision_product`), and the remat policies
    keep each Dense as its bf16 output (`PROJECTION`), not as its float32 product.

Every parameter carries logical axis names (see `sedd_jax.parallel` for the rules that map them to mesh
axes): "vocab", "embed", "heads" (the fused q/k/v and attention output columns), "mlp", "cond", "freq",
"modulation".
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from sedd_jax.models.dropout_mask import keep_mask

FREQUENCY_EMBEDDING_SIZE = 256
LAYER_NORM_EPS = 1e-5
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype_of(name: str):
    if name not in DTYPES:
        raise ValueError(f"unknown compute_dtype {name!r}; choose 'float32' or 'bfloat16'")
    return DTYPES[name]


@jax.custom_vjp
def _low_precision_product(rows: jax.Array, kernel: jax.Array) -> jax.Array:
    """rows `[N, in]` x kernel `[in, out]`, both in a low-precision dtype, accumulated and returned in float32,
    with a backward whose two products also take their operands in that dtype. Only for a product whose float32
    output is rounded to that dtype (plus a bias) before anything else reads it, as in `TorchLinear`: its
    cotangent is then a low-precision value, and casting it back loses nothing. Autodiff leaves the cast out, and
    XLA (which may keep excess precision) then ran the input gradient of the output layer in the chunked loss
    (`losses.MaskedPositionsLoss`) as a float32 product, TF32 on GPUs: twice the memory traffic at half the
    bfloat16 rate, for the largest product of the step."""
    return jnp.dot(rows, kernel, preferred_element_type=jnp.float32)


def _low_precision_product_forward(rows, kernel):
    return _low_precision_product(rows, kernel), (rows, kernel)


def _low_precision_product_backward(residuals, d_out):
    rows, kernel = residuals
    d_out = d_out.astype(rows.dtype)
    d_rows = jnp.dot(d_out, kernel.T, preferred_element_type=jnp.float32).astype(rows.dtype)
    d_kernel = jnp.dot(rows.T, d_out, preferred_element_type=jnp.float32).astype(kernel.dtype)
    return d_rows, d_kernel


_low_precision_product.defvjp(_low_precision_product_forward, _low_precision_product_backward)


@jax.custom_vjp
def _narrow_output_product(rows: jax.Array, kernel: jax.Array) -> jax.Array:
    """rows `[N, in]` x kernel `[in, out]` in float32, for in > out on CPUs: the same product, with a backward that
    takes the kernel's gradient as the transpose of d_out^T rows `[out, in]`. XLA's CPU backend runs autodiff's
    rows^T d_out for such a kernel at two thirds of the speed of the transposed product (one core, N = 2048: 16.3
    ms against 10.9 ms for the [1024 -> 256] MLP output of issue 8's benchmark, 10.7 ms for the [256 -> 1024] MLP
    input), and it folds a plain transpose back into the product, hence the optimization barrier. The gradient is
    the same product with its operands swapped (equal to autodiff's in tests/test_model_execution.py)."""
    return jnp.dot(rows, kernel)


def _narrow_output_product_forward(rows, kernel):
    return _narrow_output_product(rows, kernel), (rows, kernel)


def _narrow_output_product_backward(residuals, d_out):
    rows, kernel = residuals
    d_kernel_transposed = jax.lax.dot_general(d_out, rows, (((0,), (0,)), ((), ())))         # [out, in]
    return jnp.dot(d_out, kernel.T), jax.lax.optimization_barrier(d_kernel_transposed).T


_narrow_output_product.defvjp(_narrow_output_product_forward, _narrow_output_product_backward)


class TorchLinear(nn.Module):
    """y = x @ kernel + bias with torch.nn.Linear's default init (U(+-1/sqrt(fan_in)) for both) or zeros.

    x: `[..., in]`; kernel `[in, out]` float32 params; computes in `dtype`."""

    features: int
    axes: tuple[str, str]
    dtype: jnp.dtype = jnp.float32
    use_bias: bool = True
    zero_init: bool = False
    low_precision_backward: bool = False  # backward products in `dtype` too (_low_precision_product): the output
                                          # layer's; on every layer it cost a TPU program 1.7% more memory

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        bound = 1 / math.sqrt(fan_in)

        def init(key, shape, dtype=jnp.float32):
            if self.zero_init:
                return jnp.zeros(shape, dtype)
            return jax.random.uniform(key, shape, dtype, -bound, bound)

        kernel = self.param("kernel", nn.with_logical_partitioning(init, self.axes), (fan_in, self.features))
        # As one [N, in] x [in, out] product: its weight gradient is then a plain [N, in]^T x [N, out] product,
        # which XLA's CPU backend runs without transposing [N, out] first (as it does with [B, L] kept apart).
        rows = x.reshape(-1, fan_in).astype(self.dtype)
        if self.low_precision_backward and self.dtype != jnp.float32:
            y = _low_precision_product(rows, kernel.astype(self.dtype))
        elif self.dtype == jnp.float32 and fan_in > self.features and _target_platform() == "cpu":
            # named so that the dot-saving remat policies keep it as they keep a product they can see
            y = checkpoint_name(_narrow_output_product(rows, kernel), PROJECTION)
        else:
            y = jnp.dot(rows, kernel.astype(self.dtype), preferred_element_type=jnp.float32)
        y = y.reshape(*x.shape[:-1], self.features)
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(init, (self.axes[1],)), (self.features,))
            y = y + bias
        if self.dtype == jnp.float32:
            return y.astype(self.dtype)
        return checkpoint_name(y.astype(self.dtype), PROJECTION)


class LayerNorm(nn.Module):
    """Weight-only LayerNorm over the last axis, eps 1e-5, always computed in float32. `[..., H]`."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
                           (x.shape[-1],))
        x = x.astype(jnp.float32)
        mean = x.mean(axis=-1, keepdims=True)
        var = jnp.square(x - mean).mean(axis=-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPS) * scale


def timestep_features(sigma: jax.Array, size: int = FREQUENCY_EMBEDDING_SIZE, max_period: float = 10000.0):
    """Sinusoidal features of the total noise: `[B]` -> `[B, size]` float32, cosines first."""
    half = size // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = sigma.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def rotary_angles(length: int, head_dim: int, base: float = 10000.0) -> tuple[jax.Array, jax.Array]:
    """cos and sin of the rotate-half RoPE angles, each `[L, head_dim]` float32 (halves duplicated)."""
    inv_freq = base ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    theta = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq[None]
    theta = jnp.concatenate([theta, theta], axis=-1)
    return jnp.cos(theta), jnp.sin(theta)


def apply_rotary(u: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE on `[B, L, nh, dh]` with cos/sin `[L, dh]`; computed in float32, returned in u's dtype."""
    half = u.shape[-1] // 2
    uf = u.astype(jnp.float32)
    rotated = jnp.concatenate([-uf[..., half:], uf[..., :half]], axis=-1)
    cos = cos.astype(u.dtype).astype(jnp.float32)[None, :, None, :]
    sin = sin.astype(u.dtype).astype(jnp.float32)[None, :, None, :]
    return (uf * cos + rotated * sin).astype(u.dtype)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """x `[..., H]` float32; shift/scale broadcasting against it (`[B, 1, H]` per sequence of `[B, L, H]`, or
    one row per position) -> float32 `[..., H]`."""
    return x * (1 + scale.astype(jnp.float32)) + shift.astype(jnp.float32)


GELU_TANH_COEFFICIENT = math.sqrt(2 / math.pi)
GELU_CUBIC_COEFFICIENT = 0.044715


@jax.custom_vjp
def tanh_gelu(u: jax.Array) -> jax.Array:
    """GELU's tanh approximation, `jax.nn.gelu(u, approximate=True)` (the reference's `GELU("tanh")`), any shape.

    The backward is written out and computed in float32 from u alone, in one pass: with z = c (u + a u^3),
    gelu(u) = u sigmoid(2z), so d/du = s + 2 u s (1 - s) c (1 + 3 a u^2) with s = sigmoid(2z), and
    s (1 - s) = e / (1 + e)^2 with e = exp(-2|z|) <= 1, which neither cancels nor overflows. Autodiff of the
    forward stores tanh(z) and reads it back in a second pass (2% of the CPU train step, issue 8), and loses
    digits where tanh(z) nears -1 (max error 1.3e-5 against 8e-7 here, for u ~ N(0, 9)).

    Under low-precision compute the gradient is rounded to u's dtype behind an optimization barrier: XLA otherwise
    drops the rounding where the preceding Dense's bias gradient reads it back in float32 ("excess precision") and
    writes the float32 product out for it, `[B, L, 4H]` in float32 per block (SEDD-small, bf16, 32 x 1024 on an
    H200: 84.3 -> 78.1 GiB of traffic in the blocks' backward). Float32 programs are unchanged."""
    return jax.nn.gelu(u, approximate=True)


def _tanh_gelu_forward(u):
    return tanh_gelu(u), u


def _tanh_gelu_backward(u, d_out):
    u = u.astype(jnp.float32)
    z = GELU_TANH_COEFFICIENT * (u + GELU_CUBIC_COEFFICIENT * u * u * u)
    e = jnp.exp(-2 * jnp.abs(z))
    s = jnp.where(z >= 0, 1, e) / (1 + e)                                       # sigmoid(2z)
    dz_du = GELU_TANH_COEFFICIENT * (1 + 3 * GELU_CUBIC_COEFFICIENT * u * u)
    slope = s + 2 * u * e / jnp.square(1 + e) * dz_du
    d_u = (d_out.astype(jnp.float32) * slope).astype(d_out.dtype)
    return (d_u if d_u.dtype == jnp.float32 else jax.lax.optimization_barrier(d_u),)


tanh_gelu.defvjp(_tanh_gelu_forward, _tanh_gelu_backward)


def plain_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Bidirectional softmax attention written out: q, k, v `[B, L, nh, dh]` -> `[B, L, nh, dh]` in v's dtype.

    q is scaled by 1/sqrt(dh) before the product (an [L, dh] multiply instead of an [L, L] one); scores,
    softmax and the weighted sum accumulate in float32. Heads are moved next to the batch so both products
    are plain batched matmuls (no transposed copies of the [B, nh, L, L] scores on CPUs). The softmax is
    normalised after the weighted sum and has its own backward (`_softmax_attention`)."""
    scale = 1 / math.sqrt(q.shape[-1])
    q, k, v = (u.transpose(0, 2, 1, 3) for u in (q * jnp.asarray(scale, q.dtype), k, v))  # [B, nh, L, dh]
    return _softmax_attention(q, k, v).astype(v.dtype).transpose(0, 2, 1, 3)


@jax.custom_vjp
def _softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """softmax(q k^T) v for q (already scaled), k, v `[B, nh, L, dh]` -> float32 `[B, nh, L, dh]`.

    Forward: E = exp(S - rowmax S) stays unnormalised and the row sums l divide the `[L, dh]` product E v
    instead of the `[L, L]` weights (one pass over the scores fewer). Backward, with P = E / l and
    D = rowsum(dO * O) (an `[L, dh]` reduction in place of autodiff's `[L, L]` rowsum(dP * P)):
    dV = E^T (dO / l), dS = E * ((dO / l) V^T - D / l), dQ = dS K, dK = dS^T Q. Same values as autodiff of
    `jax.nn.softmax` up to float32 rounding (tests/test_model_execution.py)."""
    return _softmax_attention_forward(q, k, v)[0]


def _softmax_attention_forward(q, k, v):
    scores = jnp.einsum("bhld,bhmd->bhlm", q, k, preferred_element_type=jnp.float32)
    unnormalised = jnp.exp(scores - scores.max(axis=-1, keepdims=True))  # [B, nh, L, L], each row's max is 1
    row_sums = unnormalised.sum(axis=-1, keepdims=True)                   # [B, nh, L, 1], >= 1
    out = jnp.einsum("bhlm,bhmd->bhld", unnormalised.astype(v.dtype), v,
                     preferred_element_type=jnp.float32) / row_sums
    return out, (q, k, v, unnormalised, row_sums, out)


def _softmax_attention_backward(residuals, d_out):
    q, k, v, unnormalised, row_sums, out = residuals
    d_out_scaled = d_out / row_sums                                                    # [B, nh, L, dh]
    d_v = jnp.einsum("bhlm,bhld->bhmd", unnormalised.astype(v.dtype), d_out_scaled.astype(v.dtype),
                     preferred_element_type=jnp.float32)
    d_weights = jnp.einsum("bhld,bhmd->bhlm", d_out_scaled.astype(v.dtype), v,
                           preferred_element_type=jnp.float32)                          # dP / l, [B, nh, L, L]
    d_scores = unnormalised * (d_weights - (d_out * out).sum(axis=-1, keepdims=True) / row_sums)
    d_q = jnp.einsum("bhlm,bhmd->bhld", d_scores.astype(k.dtype), k, preferred_element_type=jnp.float32)
    d_k = jnp.einsum("bhlm,bhld->bhmd", d_scores.astype(q.dtype), q, preferred_element_type=jnp.float32)
    return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype)


_softmax_attention.defvjp(_softmax_attention_forward, _softmax_attention_backward)


def _target_platform() -> str:
    """The platform the program is traced for: the devices of the mesh set by `jax.set_mesh` (GPUs that are only
    described, when `sedd_jax.compile` compiles for them without the hardware), else JAX's default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else mesh.abstract_device
    return device.platform if device is not None else jax.default_backend()


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """`jax.nn.dot_product_attention` (same shapes and math as `plain_attention`): cuDNN's fused flash attention
    on NVIDIA GPUs for bfloat16 inputs, XLA's implementation elsewhere."""
    implementation = None
    if _target_platform() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16):
        implementation = "cudnn"
        q, k, v = (checkpoint_name(u, CUDNN_INPUTS) for u in (q, k, v))
    return jax.nn.dot_product_attention(q, k, v, scale=1 / math.sqrt(q.shape[-1]), implementation=implementation)


SPLASH_BLOCK = 512  # splash attention's query and key block, or 256 or 128 where it does not divide the length


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, interpret: bool = False) -> jax.Array:
    """Pallas's splash (flash) attention kernel on TPUs, the same function as `plain_attention` (same shapes, all
    positions attend to all); on other platforms `plain_attention` itself, so a config with it runs anywhere.
    `interpret=True` runs the kernel through Pallas's interpreter on any platform (tests). Sequence lengths must
    be multiples of 128 (others, e.g. `init`'s 2-token dummy input, take `plain_attention`). Under a device mesh
    (`jax.set_mesh`: the trainer's steps, the sampler and the likelihood evaluation set theirs) each device runs
    the kernel on its shard (`jax.shard_map`: the batch over the mesh's axes other than "tensor", the heads over
    "tensor")."""
    if q.shape[1] % 128:  # e.g. the 2-token dummy input of `init`; models.get_model rejects such model.length
        return plain_attention(q, k, v)
    kernel = functools.partial(_splash_attention_sharded, interpret=interpret)
    if interpret:
        return kernel(q, k, v)
    return jax.lax.platform_dependent(q, k, v, tpu=kernel, default=plain_attention)


def _splash_attention_sharded(q, k, v, interpret: bool):
    mesh = jax.sharding.get_abstract_mesh()
    local = functools.partial(_splash_attention_local, interpret=interpret)
    if mesh.empty or mesh.size == 1:
        return local(q, k, v)
    heads = "tensor" if "tensor" in mesh.shape and q.shape[2] % mesh.shape["tensor"] == 0 else None
    batch = tuple(axis for axis in mesh.axis_names if axis != "tensor")  # the trainer's data, fsdp; "batch"
    if q.shape[0] % math.prod(mesh.shape[axis] for axis in batch):
        batch = None  # e.g. the few rows a skipping sampler re-evaluates: every device takes them all
    spec = jax.sharding.PartitionSpec(batch, None, heads, None)
    return jax.shard_map(local, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q, k, v)


def _splash_attention_local(q, k, v, interpret: bool):
    """The kernel on q, k, v `[B, L, nh, dh]` -> `[B, L, nh, dh]` in v's dtype (the kernel accumulates in
    float32)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash  # Pallas: imported when used

    length, heads, head_dim = q.shape[1], q.shape[2], q.shape[3]
    block = next(b for b in (SPLASH_BLOCK, 256, 128) if length % b == 0)
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    mask = splash.MultiHeadMask([splash.FullMask((length, length)) for _ in range(heads)])
    kernel = splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret,
                                    residual_checkpoint_name=ATTENTION_RESIDUALS)
    q = q * jnp.asarray(1 / math.sqrt(head_dim), q.dtype)
    q, k, v = (u.transpose(0, 2, 1, 3) for u in (q, k, v))  # [B, nh, L, dh]
    return jax.vmap(kernel)(q, k, v).astype(v.dtype).transpose(0, 2, 1, 3)


ATTENTION_IMPLEMENTATIONS = {"plain": plain_attention, "fused": fused_attention, "splash": splash_attention}

DROPOUT_MASK = "dropout_mask"  # checkpoint name of the dropout masks: kept by every remat policy (1 byte per
                               # activation), so the backward never redraws them
ATTENTION_RESIDUALS = "attention_residuals"  # splash attention's output and row log-sum-exp: kept by every
                                             # policy, so the backward never reruns the forward kernel (cuDNN's
                                             # likewise, through _cudnn_attention_forward)
PROJECTION = "projection"  # what the dot-saving policies keep of a TorchLinear where they cannot see a product:
                           # under low-precision compute its rounded output instead of its float32 product (half
                           # the bytes; see _rounded_projections), on CPUs a _narrow_output_product
CUDNN_INPUTS = "cudnn_attention_inputs"  # q (rotated), k (rotated) and v as cuDNN's attention takes them (GPUs,
                                         # bf16): kept by the dot-saving policies (see _rounded_projections)


def _cudnn_attention_forward(prim, *avals, **params) -> bool:
    """cuDNN's flash-attention forward kernel (`fused_attention` on GPUs) as differentiation runs it: its output
    and softmax statistics are what its backward kernel reads. JAX names no residuals of it, so the primitive is
    matched (tests/test_model_execution.py fails if JAX renames it). Kept, they spare the backward a rerun of the
    kernel: SEDD-small, bf16, 32 x 1024 on an H200, one forward kernel of the blocks' scan instead of two, for
    545 MiB more temporaries (8.4 -> 8.9 GiB)."""
    return prim.name == "dot_product_attention_fwd_wrapper" and params.get("is_training", False)


def _keeping_dropout_masks(policy):
    """`policy`, also keeping the dropout masks and the attention kernels' residuals (splash's by name, cuDNN's by
    primitive), whatever it says of them."""
    names = jax.checkpoint_policies.save_only_these_names(DROPOUT_MASK, ATTENTION_RESIDUALS)
    return lambda prim, *avals, **params: (policy(prim, *avals, **params) or names(prim, *avals, **params)
                                           or _cudnn_attention_forward(prim, *avals, **params))


def _widened_product(prim, *avals, **params) -> bool:
    """A product without batch dimensions of low-precision operands accumulated into float32: a TorchLinear's
    under bfloat16 compute, whose output is rounded to bfloat16 (plus a bias) before anything reads it."""
    if prim is not jax.lax.dot_general_p or any(params["dimension_numbers"][1]):
        return False
    return params.get("preferred_element_type") == jnp.float32 and all(a.dtype != jnp.float32 for a in avals)


def _rounded_projections(policy):
    """`policy`, except that a TorchLinear under low-precision compute is kept as its rounded output (PROJECTION)
    rather than as its float32 product, which everything after it reads only through that output: the same
    recomputation in half the memory (SEDD-small, bf16, 32 x 1024 on an H200: 13.0 -> 8.4 GiB of temporaries).
    cuDNN's attention inputs (CUDNN_INPUTS) are kept too, which its backward kernel reads: rebuilding them from the
    kept qkv projection took a rotary pass over q and k and a copy of v per block (SEDD-small on an H200: 57.97 ->
    57.50 ms at the roofline, the same temporaries; bench/README.md). In float32 nothing is widened; PROJECTION
    there names the products with their own backward on CPUs (_narrow_output_product), kept as the policy keeps
    any other product."""
    def saveable(prim, *avals, **params):
        return policy(prim, *avals, **params) and not _widened_product(prim, *avals, **params)
    return jax.checkpoint_policies.save_from_both_policies(
        saveable, jax.checkpoint_policies.save_only_these_names(PROJECTION, CUDNN_INPUTS))


# Rematerialisation policies for the blocks' backward pass (`SEDD.remat`): which forward values are kept.
REMAT_POLICIES = {
    "none": None,                                                   # keep everything (no recomputation)
    "dots": _keeping_dropout_masks(_rounded_projections(jax.checkpoint_policies.dots_saveable)),
                                                                    # matmul outputs; recompute the rest
    "dots_no_batch": _keeping_dropout_masks(
        _rounded_projections(jax.checkpoint_policies.dots_with_no_batch_dims_saveable)),
                                                                    # ... but not attention's scores / values
    "full": _keeping_dropout_masks(jax.checkpoint_policies.nothing_saveable),  # each block's input only
}


def dropout(module: nn.Module, x: jax.Array, rate: float, train: bool) -> jax.Array:
    """Inverted dropout: keep with probability p = 1 - rate (rounded to 2^-16, `dropout_mask.keep_mask`), scale
    by 1 / p, as `nn.Dropout` does. The mask is named for the remat policies. Draws from `module`'s "dropout"
    rng stream."""
    if not train or rate == 0:
        return x
    keep, keep_probability = keep_mask(module.make_rng("dropout"), x.shape, rate)
    keep = checkpoint_name(keep, DROPOUT_MASK)
    return jnp.where(keep, x / jnp.asarray(keep_probability, x.dtype), jnp.zeros((), x.dtype))


class DDiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-zero modulation. x `[B, L, H]` float32, c `[B, C]` float32.

    `__call__` is `feed_forward(x, *attend(x, c, cos, sin))`, split so that a caller can run the second half at
    some positions only (`SEDD.head`)."""

    hidden_size: int
    n_heads: int
    dropout: float
    dtype: jnp.dtype
    attention: str = "plain"

    def setup(self):
        h = self.hidden_size
        self.adaLN = TorchLinear(6 * h, ("cond", "modulation"), self.dtype, zero_init=True)
        self.norm1 = LayerNorm()
        self.attn_qkv = TorchLinear(3 * h, ("embed", "heads"), self.dtype, use_bias=False)
        self.attn_out = TorchLinear(h, ("heads", "embed"), self.dtype, use_bias=False)
        self.norm2 = LayerNorm()
        self.mlp_in = TorchLinear(4 * h, ("embed", "mlp"), self.dtype)
        self.mlp_out = TorchLinear(h, ("mlp", "embed"), self.dtype)

    def __call__(self, x, c, cos, sin, train: bool):
        attn, mod = self.attend(x, c, cos, sin)
        return self.feed_forward(x, attn, mod[:, None], train)

    def attend(self, x, c, cos, sin):
        """x `[B, L, H]`, c `[B, C]` -> (attention's output before its projection `[B, L, H]` in dtype, the
        block's modulation `[B, 6H]`)."""
        b, length, h = x.shape
        head_dim = h // self.n_heads
        mod = self.adaLN(c)
        shift_msa, scale_msa = jnp.split(mod, 6, axis=-1)[:2]
        qkv = self.attn_qkv(modulate(self.norm1(x), shift_msa[:, None], scale_msa[:, None]))
        qkv = qkv.reshape(b, length, 3, self.n_heads, head_dim)
        q = apply_rotary(qkv[:, :, 0], cos, sin)
        k = apply_rotary(qkv[:, :, 1], cos, sin)
        attn = ATTENTION_IMPLEMENTATIONS[self.attention](q, k, qkv[:, :, 2])
        return attn.reshape(b, length, h), mod

    def feed_forward(self, x, attn, mod, train: bool):
        """The rest of the block, position by position: x, attn `[..., H]` (the residual stream and `attend`'s
        output), mod `[..., 6H]` broadcasting against them -> the block's output `[..., H]` float32."""
        _, _, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)
        drop = lambda u: dropout(self, u, self.dropout, train)
        x = x + gate_msa * drop(self.attn_out(attn))
        mlp = self.mlp_in(modulate(self.norm2(x), shift_mlp, scale_mlp))
        mlp = self.mlp_out(tanh_gelu(mlp))
        return x + gate_mlp * drop(mlp)


class SEDD(nn.Module):
    """The SEDD score network.

    Attributes:
      vocab_size: V = graph.dim (tokens + 1 for absorb, tokens for uniform).
      hidden_size, n_heads, n_blocks, cond_dim, dropout: as the reference's `model.*` config.
      scale_by_sigma: subtract log(e^sigma - 1) + log(V - 1) from the logits (absorb only).
      compute_dtype: "float32" or "bfloat16" (see the module docstring).
      attention: "plain" (written-out softmax attention) or "fused" (`jax.nn.dot_product_attention`: cuDNN
        flash attention on GPUs in bfloat16); the same function either way.
      scan_blocks: run the blocks as one `lax.scan` (one compiled block: faster compiles, and on CPUs a much
        faster backward pass); parameters are stored per block either way. Dropout masks differ between the
        two paths (both are valid draws).
      remat: rematerialisation policy of the blocks in the backward pass, a key of `REMAT_POLICIES`.
      time_conditioning: False makes the network time-independent (absorb with scale_by_sigma only): the
        conditioning vector is computed from sigma = 0, a learned constant, so the log-score depends on sigma
        only through the -log(e^sigma - 1) shift. The true absorbing score has this form (p(x_l = y | unmasked
        tokens) / (e^sigma - 1)), and samplers can then reuse the network's output while no token changes
        (`sampling.get_pc_sampler(..., skip_unchanged=True)`). The parameters are the same either way.
    """

    vocab_size: int
    hidden_size: int = 768
    n_heads: int = 12
    n_blocks: int = 12
    cond_dim: int = 128
    dropout: float = 0.1
    scale_by_sigma: bool = True
    compute_dtype: str = "float32"
    attention: str = "plain"
    scan_blocks: bool = False
    remat: str = "none"
    time_conditioning: bool = True

    def setup(self):
        dtype = compute_dtype_of(self.compute_dtype)
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(
                nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform", in_axis=1, out_axis=0),
                ("vocab", "embed")),
            (self.vocab_size, self.hidden_size))
        self.sigma_mlp_in = TorchLinear(self.cond_dim, ("freq", "cond"))
        self.sigma_mlp_out = TorchLinear(self.cond_dim, ("cond", "cond"))
        block = (DDiTBlock if self.remat == "none"
                 else nn.remat(DDiTBlock, policy=REMAT_POLICIES[self.remat], static_argnums=(5,)))
        self.blocks = [block(self.hidden_size, self.n_heads, self.dropout, dtype, self.attention)
                       for _ in range(self.n_blocks)]
        self.final_adaLN = TorchLinear(2 * self.hidden_size, ("cond", "modulation"), dtype, zero_init=True)
        self.norm_final = LayerNorm()
        self.output = TorchLinear(self.vocab_size, ("embed", "vocab"), dtype, zero_init=True,
                                  low_precision_backward=True)

    def _unbound_block(self) -> DDiTBlock:
        """A block of this network outside it, to `apply` with one block's parameters under a JAX transform."""
        return DDiTBlock(self.hidden_size, self.n_heads, self.dropout, compute_dtype_of(self.compute_dtype),
                         self.attention, parent=None)

    def _scanned_blocks(self, x, c, cos, sin, train: bool, count: int):
        """The first `count` blocks as one `lax.scan` over their parameters stacked on the fly (the stored tree
        keeps one `blocks_<i>` entry per block, so checkpoints do not depend on this switch). x `[B, L, H]`
        float32."""
        params = self.variables["params"]
        stacked = jax.tree.map(lambda *p: jnp.stack(p), *[params[f"blocks_{i}"] for i in range(count)])
        use_dropout = train and self.dropout > 0
        dropout_keys = (jax.random.split(self.make_rng("dropout"), count) if use_dropout
                        else jnp.zeros((count,)))
        block = self._unbound_block()

        def body(x, inputs):
            block_params, key = inputs
            rngs = {"dropout": key} if use_dropout else {}
            return block.apply({"params": block_params}, x, c, cos, sin, train, rngs=rngs), None

        if self.remat != "none":
            body = jax.checkpoint(body, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
        x, _ = jax.lax.scan(body, x, (stacked, dropout_keys))
        return x

    def _embed(self, indices, sigma, count: int, train: bool):
        """Token embedding, conditioning and the first `count` blocks: (x `[B, L, H]`, c `[B, C]`, cos, sin)."""
        sigma = sigma.reshape(-1).astype(jnp.float32)
        x = jnp.take(self.embedding, indices, axis=0)
        features = timestep_features(sigma if self.time_conditioning else jnp.zeros_like(sigma))
        c = nn.silu(self.sigma_mlp_out(nn.silu(self.sigma_mlp_in(features))))
        cos, sin = rotary_angles(indices.shape[1], self.hidden_size // self.n_heads)
        if self.scan_blocks and count and not self.is_initializing():
            x = self._scanned_blocks(x, c, cos, sin, train, count)
        else:
            for block in self.blocks[:count]:
                x = block(x, c, cos, sin, train)
        return x, c, cos, sin

    def _log_score(self, x, final_mod, sigma, indices):
        """The final layer on the residual stream x `[..., H]`, final_mod `[..., 2H]` broadcasting against it,
        sigma and indices `[...]` (each position's total noise and token) -> log score `[..., V]`."""
        dtype = compute_dtype_of(self.compute_dtype)
        shift, scale = jnp.split(final_mod, 2, axis=-1)
        logits = self.output(modulate(self.norm_final(x), shift, scale))
        if self.scale_by_sigma:
            sigma = sigma.astype(jnp.float32)
            esigm1 = jnp.where(sigma < 0.5, jnp.expm1(sigma), jnp.exp(sigma) - 1)
            logits = logits - jnp.log(esigm1).astype(dtype)[..., None] - jnp.asarray(
                math.log(self.vocab_size - 1), dtype)
        return jnp.where(jax.nn.one_hot(indices, self.vocab_size, dtype=jnp.bool_), jnp.zeros((), dtype), logits)

    def __call__(self, indices: jax.Array, sigma: jax.Array, train: bool = False) -> jax.Array:
        """indices `[B, L]` int, sigma `[B]` total noise -> log score `[B, L, V]` in compute_dtype."""
        sigma = sigma.reshape(-1).astype(jnp.float32)
        x, c, _, _ = self._embed(indices, sigma, self.n_blocks, train)
        return self._log_score(x, self.final_adaLN(c)[:, None], sigma[:, None], indices)

    @property
    def head_param_names(self) -> tuple[str, ...]:
        """The top-level parameter entries that `head` uses (the others only reach it through `trunk`)."""
        return (f"blocks_{self.n_blocks - 1}", "norm_final", "output")

    def trunk(self, indices: jax.Array, sigma: jax.Array, train: bool = False):
        """The network up to the last block's attention, which needs every position; `head` finishes it at any
        positions. Same arguments as `__call__`. Returns (per_position, per_row): per_position = (the residual
        stream entering the last block `[B, L, H]`, that block's attention output before its projection
        `[B, L, H]`), per_row = (that block's modulation `[B, 6H]`, the final layer's `[B, 2H]`)."""
        x, c, cos, sin = self._embed(indices, sigma, self.n_blocks - 1, train)
        name = f"blocks_{self.n_blocks - 1}"
        block = self._unbound_block()
        attend = lambda params, x: block.apply({"params": params}, x, c, cos, sin, method="attend")
        if self.remat != "none":  # as the other blocks
            attend = jax.checkpoint(attend, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
        attn, block_mod = attend(self.variables["params"][name], x)
        return (x, attn), (block_mod, self.final_adaLN(c))

    def head(self, per_position, per_row, sigma: jax.Array, indices: jax.Array, train: bool = False) -> jax.Array:
        """The last block's feed-forward half and the final layer, position by position: `trunk`'s outputs taken
        at any positions (per_position entries `[..., H]`, per_row entries `[..., 6H]`, `[..., 2H]`: each
        position's row), with each position's total noise sigma and token indices `[...]` -> the log score
        `[..., V]` there, what `__call__` computes (dropout masks aside)."""
        x, attn = per_position
        block_mod, final_mod = per_row
        x = self.blocks[-1].feed_forward(x, attn, block_mod, train)
        return self._log_score(x, final_mod, sigma, indices)


def trunk_and_head(model: SEDD, train: bool = False, dropout_key: jax.Array | None = None):
    """`SEDD.trunk` and `SEDD.head` as functions of the parameters, the form `losses.MaskedPositionsLoss` takes:
    `trunk(params, x int[B, L], sigma float[B]) -> (per_position, per_row)` and `head(params, per_position, per_row,
    sigma, x, chunk int32[]) -> log score`. In training with a dropout_key, the trunk draws its dropout masks from
    the first half of `split(dropout_key)` and chunk c of the head from `fold_in(second half, c)`."""
    trunk_key, head_key = (None, None) if dropout_key is None else jax.random.split(dropout_key)
    rngs = lambda key: None if key is None else {"dropout": key}
    trunk = lambda params, x, sigma: model.apply({"params": params}, x, sigma, train=train, method=model.trunk,
                                                 rngs=rngs(trunk_key))
    head = lambda params, per_position, per_row, sigma, x, chunk: model.apply(
        {"params": params}, per_position, per_row, sigma, x, train=train, method=model.head,
        rngs=rngs(None if head_key is None else jax.random.fold_in(head_key, chunk)))
    return trunk, head
