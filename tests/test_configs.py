"""configs.flatten and configs.config_changes: what resuming a workdir compares against its config.json."""

import json

import ml_collections

from sedd_jax import configs


def _saved(config) -> ml_collections.ConfigDict:
    """The config as a workdir holds it (checkpoints.record_config) and reads it back (check_resumable)."""
    return ml_collections.ConfigDict(json.loads(json.dumps(config.to_dict(), default=str)))


def test_flatten_nested_config_dict_and_dict():
    c = ml_collections.ConfigDict({"tokens": 7, "model": {"hidden_size": 32, "inner": {"x": 1.5, "on": True}},
                                   "mesh": {"rules": (("vocab", "tensor"), ("cond", None))}, "name": None})
    expected = {"tokens": 7, "model.hidden_size": 32, "model.inner.x": 1.5, "model.inner.on": True,
                "mesh.rules": [["vocab", "tensor"], ["cond", None]], "name": None}
    assert configs.flatten(c) == expected
    assert configs.flatten(c.to_dict()) == expected
    assert configs.flatten({"a": {"b": {"c": [1, (2, 3)]}}, "d": "e"}) == {"a.b.c": [1, [2, 3]], "d": "e"}


def test_flatten_values_compare_as_config_json_holds_them():
    c = configs.base_config()
    assert configs.flatten(_saved(c)) == configs.flatten(c)
    assert configs.flatten(c)["mesh.rules"][0] == ["vocab", "tensor"]
    # A value JSON cannot hold is saved as its str(); it compares equal to that.
    odd = ml_collections.ConfigDict({"training": {"path": _Unserializable()}})
    assert configs.flatten(odd) == {"training.path": "<unserializable>"}


class _Unserializable:
    def __str__(self):
        return "<unserializable>"


def test_config_changes_refuses_meaning_fields_and_allows_the_rest():
    saved = _saved(configs.base_config())
    c = configs.base_config()
    assert configs.config_changes(saved, c) == ({}, {})
    c.noise.type = "geometric"
    c.model.hidden_size = 1024
    c.model.remat = "full"            # an execution field inside a meaning block
    c.optim.lr = 1e-4
    c.mesh.rules = tuple(list(r) for r in c.mesh.rules)   # same rules as lists: no change
    refused, allowed = configs.config_changes(saved, c)
    assert refused == {"model.hidden_size": (768, 1024), "noise.type": ("loglinear", "geometric")}
    assert allowed == {"model.remat": ("dots_no_batch", "full"), "optim.lr": (3e-4, 1e-4)}
    assert list(refused) == sorted(refused) and list(allowed) == sorted(allowed)
