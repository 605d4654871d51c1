"""The sedd-jax checkpoint format written by `python -m sedd_jax.convert`: config.json + orbax params/.

    DIR/config.json   the checkpoint's config, marked with "sedd_jax_format": 1
    DIR/params/       an orbax checkpoint of the float32 parameter tree

Readable without torch. On reading, config.json is checked like an official one (`official.config_from_dict`)
and the stored parameter shapes against the model it builds, before any array is restored.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import ml_collections
import numpy as np

from sedd_jax import models, official

PARAMS_DIR = "params"
MARKER = "sedd_jax_format"


def is_converted(path: str, raw=None) -> bool:
    """Whether `path/config.json` carries the sedd-jax marker (else it is an official-format config). `raw`:
    that file already parsed (`official.read_json`), when the caller has read it."""
    if raw is None:
        raw = official.read_json(os.path.join(path, official.CONFIG_FILE))
    return isinstance(raw, dict) and MARKER in raw


def save(output: str, config, params) -> None:
    """Writes `output/config.json` (marked as sedd-jax) and `output/params/` (orbax). `output` must not exist
    or be empty. The checkpoint is assembled in a new temporary directory beside `output` and renamed into
    place, so a failure leaves nothing half-written, and nothing that was there before is touched."""
    import jax
    import orbax.checkpoint as ocp

    output = os.path.abspath(output)
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise FileExistsError(f"{output} exists and is not an empty directory; choose a new --output directory")
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=os.path.basename(output) + ".partial-", dir=parent)
    try:
        raw = config.to_dict()
        raw[MARKER] = 1
        with open(os.path.join(staging, official.CONFIG_FILE), "w") as f:
            json.dump(raw, f, indent=2)
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(os.path.join(staging, PARAMS_DIR), jax.tree.map(np.asarray, params))
        if os.path.exists(output):
            os.rmdir(output)  # empty, checked above
        os.rename(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def read(path: str, raw=None) -> tuple[ml_collections.ConfigDict, dict]:
    """(config, float32 params) of a converted directory; ValueError when the stored shapes do not match the
    model that config.json describes. `raw`: config.json already parsed, when the caller has read it."""
    import orbax.checkpoint as ocp

    config_path = os.path.join(path, official.CONFIG_FILE)
    if raw is None:
        raw = official.read_json(config_path)
    if isinstance(raw, dict):
        raw = {k: v for k, v in raw.items() if k != MARKER}
    config = official.config_from_dict(raw, config_path)
    target = models.abstract_params(models.get_model(config))
    params_path = os.path.abspath(os.path.join(path, PARAMS_DIR))
    if not os.path.isdir(params_path):
        raise FileNotFoundError(f"{path} is marked as a sedd-jax checkpoint but has no {PARAMS_DIR}/ directory")
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            stored = checkpointer.metadata(params_path).item_metadata
        except (ValueError, OSError, KeyError) as e:
            raise ValueError(f"{params_path} is not a readable orbax checkpoint ({e})") from None
        models.check_param_shapes(getattr(stored, "tree", stored), target, params_path)
        try:
            return config, checkpointer.restore(params_path, target)
        except Exception as e:  # damaged array files surface as orbax/tensorstore errors of many types
            raise ValueError(f"{params_path}: cannot restore the parameters ({type(e).__name__}: {e})") from None
