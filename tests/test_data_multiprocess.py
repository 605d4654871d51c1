"""Two real processes (jax.distributed on localhost): disjoint slices of the same global batches."""
import json
import os
import socket
import subprocess
import sys

import numpy as np

from sedd_jax import data

from tests.data_testing import make_config, write_corpus


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_jax_processes_read_disjoint_covering_shards(tmp_path):
    glob = write_corpus(tmp_path / "corpus", num_files=40)
    workdir = str(tmp_path / "work")
    # build the shared caches once (on a pod, process 0 or a prepare step would do this)
    single = data.create_datasets(make_config(tmp_path / "work", files=glob), workdir, 0, 1)
    here = os.path.dirname(os.path.abspath(__file__))
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([os.path.dirname(here), os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, os.path.join(here, "data_two_process_worker.py"),
                               str(i), str(port), glob, workdir, str(tmp_path / f"p{i}.npy")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out
    infos = [json.load(open(tmp_path / f"p{i}.npy.json")) for i in range(2)]
    assert [(i["index"], i["count"]) for i in infos] == [(0, 2), (1, 2)]
    n = single.train_blocks
    per_process = n // 2
    rows = [np.load(tmp_path / f"p{i}.npy") for i in range(2)]
    assert rows[0].shape == (per_process, 32)
    sets = [{tuple(r) for r in x} for x in rows]
    assert len(sets[0]) == len(rows[0]) and not sets[0] & sets[1]  # disjoint
    # each process holds its half of every global batch of the single-process run
    local = single.train_iter
    for k in range(per_process // 2):
        np.testing.assert_array_equal(np.concatenate([rows[0][2 * k:2 * k + 2], rows[1][2 * k:2 * k + 2]]),
                                      next(local))
    # the same as asking for the shards explicitly in one process
    for i in range(2):
        explicit = data.create_datasets(make_config(tmp_path / "work", files=glob), workdir, i, 2)
        want = np.concatenate([next(explicit.train_iter) for _ in range((per_process + 1) // 2)])
        np.testing.assert_array_equal(rows[i], want[:per_process])
