"""The shipped config compiled ahead of time for a TPU pod slice (libtpu's compiler, no TPU): it fits, with the
memory per device accounted for; splash attention per shard under data x fsdp x tensor. Each compile of owt_small
takes minutes on 2 cores, so the other rows of docs/scale.md (v5e, owt_medium) are left to bench/scale_table.sh
(tests/test_compile.py has the CLI, the advice and the FLOPs)."""

import math

import pytest

from configs import owt_small
from sedd_jax import compile as aot
from tests.compile_testing import config_with as _config

pytest.importorskip("libtpu", reason='libtpu is missing: pip install -e ".[test]" installs it (jax[tpu])')


def _assert_fits(report, devices, hosts, mesh):
    assert report.fits, (report.memory, report.out_of_memory, report.advice)
    assert report.devices == devices and report.hosts == hosts and report.mesh == mesh
    m = report.memory
    assert 0 < m["temporaries"] and m["total"] <= report.hbm
    # The donated state is counted once: arguments (state + batch + key) ~ outputs ~ the sharded state.
    assert math.isclose(m["arguments"], report.state_bytes, rel_tol=0.01)
    assert m["total"] < m["arguments"] + m["outputs"] + m["temporaries"]


def test_owt_small_fits_a_v5p_slice_as_configured():
    report = aot.aot_compile(owt_small.get_config(), "v5p:2x2x2")
    _assert_fits(report, 8, 2, {"data": 8, "fsdp": 1, "tensor": 1})
    assert report.hbm == 95 * 2**30 and report.accum == 1 and report.device_kind == "TPU v5"
    assert report.batch_size == 512 and report.length == 1024 and report.compute_dtype == "bfloat16"


def test_splash_attention_compiles_per_shard_for_a_tpu_slice():
    """model.attention='splash' puts Pallas's splash kernels (forward, dq, dkv) into the TPU train step, each
    device running them on its shard of the batch (and of the heads under tensor parallelism), within HBM; the
    remat policy keeps the forward's residuals."""
    import jax

    from sedd_jax import parallel, program_memory, train_state, train_step

    mesh = dict(data=1, fsdp=2, tensor=2)
    config = _config(owt_small, model__attention="splash", model__n_blocks=2, model__length=512,
                     training__batch_size=8, **{f"mesh__{axis}": size for axis, size in mesh.items()})
    devices = aot.topology_devices("v5e:2x2")
    device_mesh = parallel.create_mesh(config, devices)
    _, _, model, optimizer, loss_fn = train_step.training_components(config)
    _, abstract_state, shardings = train_state.train_state_layout(config, model, optimizer, device_mesh,
                                                                  jax.random.key(0))
    compiled = train_step.compile_train_step(config, model, loss_fn, optimizer, device_mesh, abstract_state,
                                             shardings)
    calls = [line for line in compiled.as_text().split("\n") if 'custom_call_target="tpu_custom_call"' in line]
    # per block one forward (its output and log-sum-exp are kept for the backward, which never reruns it), dq and
    # dkv: the first block's in the scanned loop, the last block's outside it (the absorbing loss runs that block's
    # attention half in SEDD.trunk and the rest at masked positions only)
    names = [call.split(" = ")[0].strip() for call in calls]
    assert sorted(name.split("_")[2] for name in names) == ["dkv", "dkv", "dq", "dq", "fwd", "fwd"], names
    # each device's kernels see its shard: [B / (data * fsdp), heads / tensor, L, dh], never the whole batch
    shard = f"bf16[{8 // (mesh['data'] * mesh['fsdp'])},{12 // mesh['tensor']},512,64]"
    assert all(shard in call for call in calls), [call[:300] for call in calls]
    assert program_memory.memory_summary(compiled)["total"] <= aot.hbm_per_device(devices)
