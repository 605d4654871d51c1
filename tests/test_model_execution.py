"""How the network runs (attention implementation, scanned blocks, rematerialisation) never changes what it
computes: reference parity, equal gradients, dropout behaviour, config errors, and the analytic FLOP count."""

import dataclasses
import functools
import json
import os
import re
import subprocess
import sys

import flax
import jax
import jax.extend
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sedd_jax import flops, models, pretrained
from sedd_jax.models import transformer
from tests.conftest import TINY_CHECKPOINT
from tests.train_testing import REPO

# The first is the reference's way; the others cover each option at least once in training.
EXECUTIONS = [dict(attention="plain", scan_blocks=False, remat="none"),
              dict(attention="fused", scan_blocks=False, remat="full"),
              dict(attention="plain", scan_blocks=True, remat="dots_no_batch"),
              dict(attention="fused", scan_blocks=True, remat="dots"),
              dict(attention="plain", scan_blocks=True, remat="none")]


def _name(execution):
    return "-".join(f"{k}={v}" for k, v in execution.items())


@pytest.fixture(scope="module")
def tiny():
    return pretrained.load(TINY_CHECKPOINT)


@pytest.mark.parametrize("execution", EXECUTIONS[:4], ids=_name)
def test_every_execution_matches_the_reference(tiny, parity, execution):
    model = dataclasses.replace(tiny.model, **execution)
    log_score = np.asarray(jax.jit(lambda p, x, s: model.apply({"params": p}, x, s))(
        tiny.params, parity["x"], parity["sigma"]))
    np.testing.assert_allclose(log_score, parity["log_score"], atol=2e-5, rtol=0)


def test_plain_and_fused_attention_agree_in_bfloat16(parity):
    bf16 = pretrained.load(TINY_CHECKPOINT, compute_dtype="bfloat16")
    plain = bf16.model.apply({"params": bf16.params}, parity["x"], parity["sigma"])
    fused = dataclasses.replace(bf16.model, attention="fused").apply({"params": bf16.params}, parity["x"],
                                                                      parity["sigma"])
    assert plain.dtype == fused.dtype == jnp.bfloat16
    high = np.abs(np.asarray(parity["log_score"])).max()
    assert np.abs(np.asarray(plain, np.float32) - np.asarray(fused, np.float32)).max() < 0.02 * high


def _softmax_attention_by_autodiff(q, k, v):
    """The textbook form, differentiated by jax: softmax(q k^T / sqrt(dh)) v, q/k/v `[B, L, nh, dh]`."""
    scores = jnp.einsum("blhd,bmhd->bhlm", q, k) / np.sqrt(q.shape[-1])
    return jnp.einsum("bhlm,bmhd->blhd", jax.nn.softmax(scores, axis=-1), v)


def test_plain_attention_values_and_gradients_match_autodiff_of_softmax():
    q, k, v, d_out = (3 * jax.random.normal(key, (2, 24, 3, 8)) for key in jax.random.split(jax.random.key(0), 4))
    got, got_vjp = jax.vjp(transformer.plain_attention, q, k, v)
    want, want_vjp = jax.vjp(_softmax_attention_by_autodiff, q, k, v)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for name, g, w in zip("qkv", got_vjp(d_out), want_vjp(d_out)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * np.abs(w).max(), err_msg=f"d{name}")
    low = [u.astype(jnp.bfloat16) for u in (q, k, v)]
    out, vjp = jax.vjp(transformer.plain_attention, *low)
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in vjp(out))


def test_tanh_gelu_is_jax_gelu_with_its_closed_form_derivative():
    u = 3 * jax.random.normal(jax.random.key(0), (64, 512))
    d_out = jax.random.normal(jax.random.key(1), (64, 512))
    out, vjp = jax.vjp(transformer.tanh_gelu, u)
    np.testing.assert_array_equal(out, jax.nn.gelu(u, approximate=True))
    x, g = np.asarray(u, np.float64), np.asarray(d_out, np.float64)
    c, a = np.sqrt(2 / np.pi), 0.044715
    t = np.tanh(c * (x + a * x ** 3))
    want = g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * a * x * x))
    np.testing.assert_allclose(vjp(d_out)[0], want, rtol=1e-6, atol=4e-6)
    low, low_vjp = jax.vjp(transformer.tanh_gelu, u.astype(jnp.bfloat16))
    assert low.dtype == jnp.bfloat16 and low_vjp(low)[0].dtype == jnp.bfloat16
    # the bf16 gradient is pinned to its rounding (an optimization barrier, so XLA cannot read the float32 product in
    # its place); the float32 program has no barrier
    barriers = lambda vjp, d: [e for e in jax.make_jaxpr(vjp)(d).eqns if e.primitive.name == "optimization_barrier"]
    assert [str(e.outvars[0].aval.dtype) for e in barriers(low_vjp, low)] == ["bfloat16"]
    assert barriers(vjp, d_out) == []


def _dot_input_dtypes(fn, *args):
    """The operand dtypes of every dot_general in fn's jaxpr (nested jaxprs included)."""
    found = []

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                visit(sub)

    visit(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def test_low_precision_backward_multiplies_the_cotangent_in_bfloat16():
    """The output layer's products take bf16 operands in the backward too, with the gradients of autodiff."""
    x = jax.random.normal(jax.random.key(0), (3, 5, 16))
    d_out = jax.random.normal(jax.random.key(1), (3, 5, 24)).astype(jnp.bfloat16)
    layers = {flag: transformer.TorchLinear(24, ("embed", "vocab"), jnp.bfloat16, low_precision_backward=flag)
              for flag in (False, True)}
    params = flax.core.meta.unbox(layers[False].init(jax.random.key(2), x))
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(3), p.shape), params)

    def value_and_vjp(flag):
        return jax.vjp(lambda p, u: layers[flag].apply(p, u), params, x)

    (want, want_vjp), (got, got_vjp) = value_and_vjp(False), value_and_vjp(True)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == jnp.bfloat16
    for w, g in zip(jax.tree.leaves(want_vjp(d_out)), jax.tree.leaves(got_vjp(d_out))):
        assert g.dtype == w.dtype
        w = np.asarray(w, np.float32)  # equal on CPUs; within one bf16 rounding of the largest anywhere
        np.testing.assert_allclose(np.asarray(g, np.float32), w, rtol=0, atol=2.0 ** -8 * np.abs(w).max())
    backward = lambda flag: (lambda d: value_and_vjp(flag)[1](d))
    assert ("float32", "bfloat16") in _dot_input_dtypes(backward(False), d_out)  # what autodiff leaves to XLA
    assert set(_dot_input_dtypes(backward(True), d_out)) == {("bfloat16", "bfloat16")}


@pytest.mark.parametrize("features", [8, 24])
def test_float32_layers_narrowing_on_cpus_take_the_kernel_gradient_transposed(features):
    """On CPUs a float32 TorchLinear with more inputs than outputs multiplies d_out^T x `[out, in]` for its kernel's
    gradient (XLA's CPU backend runs it faster than x^T d_out); values and gradients are autodiff's of x k + b."""
    x = jax.random.normal(jax.random.key(0), (3, 5, 16))
    d_out = jax.random.normal(jax.random.key(1), (3, 5, features))
    layer = transformer.TorchLinear(features, ("mlp", "embed"))
    params = flax.core.meta.unbox(layer.init(jax.random.key(2), x))
    by_hand = lambda p, u: u @ p["params"]["kernel"] + p["params"]["bias"]
    got, got_vjp = jax.vjp(lambda p, u: layer.apply(p, u), params, x)
    want, want_vjp = jax.vjp(by_hand, params, x)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    for g, w in zip(jax.tree.leaves(got_vjp(d_out)), jax.tree.leaves(want_vjp(d_out))):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * np.abs(w).max())
    backward = jax.jit(lambda u, d: jax.vjp(lambda p: layer.apply(p, u), params)[1](d)).lower(x, d_out).compile()
    (layout,) = re.findall(rf"= f32\[16,{features}\]\{{([01,]+)\}} dot\(", backward.as_text())
    assert layout == ("0,1" if features < 16 else "1,0")  # the kernel's gradient written [out, in] where it narrows


def test_fused_attention_follows_the_platform_of_the_mesh():
    """cuDNN's kernel is chosen by the devices a program is compiled for (GPUs only described, when sedd_jax.compile
    compiles for them on a machine without one), else by JAX's default backend."""
    assert transformer._target_platform() == jax.default_backend()
    described = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", num_cores=132, platform="gpu")
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((2,), ("data",), abstract_device=described)):
        assert transformer._target_platform() == "gpu"
    with jax.set_mesh(jax.sharding.Mesh(np.array(jax.devices("cpu")[:1]), ("data",))):
        assert transformer._target_platform() == "cpu"



@pytest.mark.parametrize("remat", ["dots", "dots_no_batch", "full"])
def test_remat_keeps_the_cudnn_attention_forward_for_its_backward(remat, monkeypatch, capsys):
    """Every remat policy keeps cuDNN's forward output and softmax statistics, which its backward kernel reads, so
    the backward never reruns the forward kernel; the dot-saving policies also keep its inputs q, k, v, which the
    backward would otherwise rebuild (rotary, a copy of v); `full` keeps no more than it must (traced for described
    H200s; tracing needs cuDNN's version only)."""
    from jax._src.cudnn import fused_attention_stablehlo  # JAX's cuDNN attention (private: the version check)
    monkeypatch.setattr(fused_attention_stablehlo, "check_cudnn_version", lambda: 91000)
    x = jnp.ones((2, 128, 2, 64), jnp.bfloat16)
    attend = jax.checkpoint(  # q, k and v computed inside, as the blocks compute them from the kept projection
        lambda x: transformer.fused_attention(x * 1.5, x * 0.5, x + 1).astype(jnp.float32).sum(),
        policy=transformer.REMAT_POLICIES[remat])
    described = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", num_cores=132, platform="gpu")
    capsys.readouterr()
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("data",), abstract_device=described)):
        jax.ad_checkpoint.print_saved_residuals(attend, x)
    printed = capsys.readouterr().out.splitlines()
    kept = [line.split(" ")[0] for line in printed if "output of dot_product_attention_fwd" in line]
    assert kept == ["bf16[2,128,2,64]", "f32[2,2,128]"]  # the output [B, L, nh, dh] and statistics [B, nh, L]
    inputs = [line.split(" ")[0] for line in printed if f"named '{transformer.CUDNN_INPUTS}'" in line]
    assert inputs == ([] if remat == "full" else ["bf16[2,128,2,64]"] * 3)

def test_splash_attention_kernel_matches_plain_attention(monkeypatch):
    # The TPU kernel's own code through Pallas's interpreter, over two blocks of keys (the online softmax).
    monkeypatch.setattr(transformer, "SPLASH_BLOCK", 128)
    q, k, v, d_out = (3 * jax.random.normal(key, (2, 256, 2, 64)) for key in jax.random.split(jax.random.key(0), 4))
    got, got_vjp = jax.vjp(functools.partial(transformer.splash_attention, interpret=True), q, k, v)
    want, want_vjp = jax.vjp(transformer.plain_attention, q, k, v)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for name, g, w in zip("qkv", got_vjp(d_out), want_vjp(d_out)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * np.abs(w).max(), err_msg=f"d{name}")
    # off TPUs (and for lengths the kernel does not take) it is plain attention
    np.testing.assert_allclose(jax.jit(transformer.splash_attention)(q, k, v), want, rtol=1e-5, atol=1e-5)
    short = [u[:, :24] for u in (q, k, v)]
    np.testing.assert_allclose(transformer.splash_attention(*short, interpret=True),
                               transformer.plain_attention(*short), rtol=1e-5, atol=1e-5)


SHARDED_SPLASH = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh
from sedd_jax.models import transformer
transformer.SPLASH_BLOCK = 128
q, k, v = (jax.random.normal(key, (4, 256, 2, 64)) for key in jax.random.split(jax.random.key(0), 3))
want = transformer.plain_attention(q, k, v)
result = {}
for name, shape, axes in (("trainer", (1, 2, 2), ("data", "fsdp", "tensor")), ("sampler", (4,), ("batch",))):
    mesh = Mesh(np.array(jax.devices()).reshape(shape), axes)
    for rows in (4, 1):
        with jax.set_mesh(mesh):
            f = jax.jit(lambda q, k, v: transformer.splash_attention(q, k, v, interpret=True))
            got = f(q[:rows], k[:rows], v[:rows])
            manual = [line for line in f.lower(q[:rows], k[:rows], v[:rows]).as_text().split("\n")
                      if "sdy.manual_computation" in line]
        result[f"{name}/{rows}"] = (float(jnp.abs(got - want[:rows]).max()), manual[0].split("out_shardings")[0])
print("RESULT", json.dumps(result))
"""


def test_splash_attention_runs_per_shard_under_a_mesh():
    # 4 CPU devices, the kernel through the interpreter: under the trainer's (data, fsdp, tensor) mesh and the
    # sampler's ("batch",) mesh each device takes its rows (and heads over "tensor"); rows that do not split
    # evenly (a skipping sampler's single row) go whole to every device. The values stay plain attention's.
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, "-c", SHARDED_SPLASH], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT", 1)[1])
    assert max(gap for gap, _ in result.values()) < 1e-5, result
    q_spec = {name: shardings.split("<@mesh, ")[5].split(">")[0] for name, (_, shardings) in result.items()}
    assert q_spec == {"trainer/4": '[{"data", "fsdp"}, {}, {"tensor"}, {}]', "trainer/1": '[{}, {}, {"tensor"}, {}]',
                      "sampler/4": '[{"batch"}, {}, {}, {}]', "sampler/1": '[{}, {}, {}, {}]'}, q_spec


def test_splash_attention_needs_lengths_that_are_multiples_of_128():
    with pytest.raises(ValueError, match=r"model.attention='splash' needs model.length to be a multiple of 128, "
                                         r"got 16; use --config.model.attention=fused"):
        models.get_model(_config(attention="splash"))


def test_splash_network_trains_as_plain_attention_off_tpus():
    # the whole network (scanned, rematerialised blocks) with model.attention='splash' on CPU: plain attention's
    # loss and gradients (jax.lax.platform_dependent picks it), so one config runs everywhere
    x = jax.random.randint(jax.random.key(2), (2, 128), 0, 21)
    sigma = jnp.array([0.3, 2.0])
    nets = {}
    for attention in ("plain", "splash"):
        cfg = _config(attention=attention, scan_blocks=True, remat="dots_no_batch")
        cfg.model.length = 128
        nets[attention] = models.get_model(cfg)
    params = _perturbed_params(nets["plain"], x, sigma)
    (want_value, want), (value, got) = (
        jax.jit(jax.value_and_grad(lambda p: jnp.sum(jnp.sin(net.apply({"params": p}, x, sigma)))))(params)
        for net in (nets["plain"], nets["splash"]))
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * np.abs(w).max())


def _config(dropout=0.0, **execution):
    return ml_collections.ConfigDict(dict(
        tokens=20, graph=dict(type="absorb"),
        model=dict(hidden_size=32, n_heads=2, n_blocks=3, cond_dim=16, length=16, dropout=dropout,
                   scale_by_sigma=True, **execution)))


def _perturbed_params(model, x, sigma):
    params = flax.core.meta.unbox(model.init(jax.random.key(0), x, sigma))["params"]
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree.unflatten(tree, [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


def test_gradients_are_equal_for_every_execution():
    x = jax.random.randint(jax.random.key(2), (4, 16), 0, 21)
    sigma = jnp.array([0.1, 0.7, 2.0, 5.0])
    reference = models.get_model(_config(attention="plain", scan_blocks=False, remat="none"))
    params = _perturbed_params(reference, x, sigma)

    def grads(model):
        loss = lambda p: jnp.sum(jnp.sin(model.apply({"params": p}, x, sigma, train=True)))
        return jax.jit(jax.value_and_grad(loss))(params)

    want_value, want = grads(reference)
    for execution in EXECUTIONS[1:]:
        value, got = grads(models.get_model(_config(**execution)))
        np.testing.assert_allclose(value, want_value, rtol=1e-5, err_msg=_name(execution))
        for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * np.abs(w).max(),
                                       err_msg=f"{_name(execution)} {path}")


def _scan_residuals(model, params, x, sigma, capsys) -> list[str]:
    """The types of what the blocks' scan keeps for the backward pass, as jax.ad_checkpoint reports them."""
    loss = lambda p: jnp.sum(jnp.sin(model.apply({"params": p}, x, sigma, train=True).astype(jnp.float32)))
    capsys.readouterr()
    jax.ad_checkpoint.print_saved_residuals(loss, params)
    return [line.split(" ")[0] for line in capsys.readouterr().out.splitlines() if " output of scan " in line]


def test_bfloat16_remat_keeps_rounded_projections_with_the_same_gradients(capsys):
    """Under bf16 compute, dots_no_batch keeps each projection as its bf16 output (half the bytes of its float32
    product, which nothing else reads); under float32 it keeps the products as before."""
    x = jax.random.randint(jax.random.key(2), (4, 16), 0, 21)
    sigma = jnp.array([0.1, 0.7, 2.0, 5.0])
    kept = {}
    for dtype in ("float32", "bfloat16"):
        model = models.get_model(_config(attention="plain", scan_blocks=True, remat="dots_no_batch"), dtype)
        kept[dtype] = _scan_residuals(model, _perturbed_params(model, x, sigma), x, sigma, capsys)
    # 3 blocks; 64 rows: modulation [4, 6 x 32], q/k/v [.., 96], attention out [.., 32], mlp [.., 128], [.., 32]
    assert kept["float32"] == ["f32[3,4,192]", "f32[3,64,96]", "f32[3,64,32]", "f32[3,64,128]", "f32[3,64,32]",
                               "f32[3,4,16,32]"]
    assert kept["bfloat16"] == ["bf16[3,4,192]", "bf16[3,4,16,96]", "bf16[3,4,16,32]", "bf16[3,4,16,128]",
                                "bf16[3,4,16,32]", "f32[3,4,16,32]"]
    low = {remat: models.get_model(_config(attention="plain", scan_blocks=True, remat=remat), "bfloat16")
           for remat in ("none", "dots_no_batch")}
    params = _perturbed_params(low["none"], x, sigma)

    def grads(model):
        loss = lambda p: jnp.sum(jnp.sin(model.apply({"params": p}, x, sigma, train=True).astype(jnp.float32)))
        return jax.jit(jax.grad(loss))(params)

    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(grads(low["dots_no_batch"])),
                            jax.tree.leaves(grads(low["none"]))):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * np.abs(w).max(), err_msg=str(path))


def test_scanned_blocks_keep_one_parameter_entry_per_block():
    x, sigma = jnp.zeros((1, 16), jnp.int32), jnp.ones((1,))
    unrolled = jax.eval_shape(models.get_model(_config(scan_blocks=False)).init, jax.random.key(0), x, sigma)
    scanned = jax.eval_shape(models.get_model(_config(scan_blocks=True)).init, jax.random.key(0), x, sigma)
    assert jax.tree.structure(unrolled) == jax.tree.structure(scanned)
    assert {"blocks_0", "blocks_1", "blocks_2"} <= set(scanned["params"])


def test_scanned_dropout_is_active_in_training_only_and_keyed():
    model = models.get_model(_config(dropout=0.5, scan_blocks=True, remat="full"))
    x = jax.random.randint(jax.random.key(2), (2, 16), 0, 21)
    sigma = jnp.array([0.3, 2.0])
    params = _perturbed_params(model, x, sigma)
    evaluate = jax.jit(model.apply)({"params": params}, x, sigma)
    train_apply = jax.jit(lambda key: model.apply({"params": params}, x, sigma, train=True, rngs={"dropout": key}))
    train = lambda k: train_apply(jax.random.key(k))
    np.testing.assert_array_equal(train(0), train(0))
    assert not np.allclose(train(0), evaluate)
    assert not np.allclose(train(0), train(1))
    unrolled = models.get_model(_config(dropout=0.0, scan_blocks=False))
    np.testing.assert_allclose(evaluate, jax.jit(unrolled.apply)({"params": params}, x, sigma), atol=1e-5)


@pytest.mark.parametrize("field, value, message", [
    ("attention", "flash", "model.attention='flash'; choose one of"),
    ("remat", "some", "model.remat='some'; choose one of")])
def test_unknown_execution_options_are_rejected(field, value, message):
    config = _config()
    config.model[field] = value
    with pytest.raises(ValueError, match=message):
        models.get_model(config)


def test_configs_without_execution_fields_get_the_defaults():
    config = _config()
    model = models.get_model(config)
    assert (model.attention, model.scan_blocks, model.remat) == ("plain", False, "none")


def test_analytic_forward_flops_match_the_compiled_program():
    """XLA's own count of the compiled forward (all ops) against the analytic matmul count: matmuls dominate
    at this width, so the two agree to a few percent and MFU figures built on the analytic count are right."""
    config = ml_collections.ConfigDict(dict(
        tokens=500, graph=dict(type="absorb"),
        model=dict(hidden_size=256, n_heads=4, n_blocks=2, cond_dim=64, length=128, dropout=0.0,
                   scale_by_sigma=True)))
    model = models.get_model(config)
    x, sigma = jnp.zeros((2, 128), jnp.int32), jnp.ones((2,))
    params = jax.eval_shape(model.init, jax.random.key(0), x, sigma)
    compiled = jax.jit(lambda p, x, s: model.apply(p, x, s)).lower(params, x, sigma).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    analytic = flops.forward_flops_per_token(config, 501) * x.size
    assert abs(cost["flops"] / analytic - 1) < 0.05, (cost["flops"], analytic)
