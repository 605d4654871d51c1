"""One of two processes joined by jax.distributed on localhost (used by test_data_multiprocess)."""
import json
import os
import sys

import numpy as np


def main():
    process_id, port, corpus_glob, workdir, out = sys.argv[1:6]
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                               process_id=int(process_id))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from data_testing import make_config
    from sedd_jax import data
    import pathlib
    config = make_config(pathlib.Path(workdir), files=corpus_glob)
    bundle = data.create_datasets(config, workdir)          # process index/count from jax
    per_process = bundle.train_blocks // 2
    rows = np.concatenate([next(bundle.train_iter) for _ in range((per_process + 1) // 2)])
    rows = rows[:per_process]                               # one epoch of this process
    np.save(out, rows)
    with open(out + ".json", "w") as f:
        json.dump(dict(index=jax.process_index(), count=jax.process_count(),
                       blocks=bundle.train_blocks), f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
