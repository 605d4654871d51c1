"""configs.flatten and configs.config_changes (what resuming a workdir compares against its config.json); the
shipped configs and `--config=NAME`."""

import json

import ml_collections
import pytest

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


# ------------------------------------------------------------------------------------- shipped configs

def test_shipped_configs_are_package_modules_re_exported_by_configs_dir(tmp_path, monkeypatch):
    import importlib

    for name in configs.SHIPPED:
        shipped = importlib.import_module(f"sedd_jax.configs.{name}")
        assert importlib.import_module(f"configs.{name}").get_config is shipped.get_config
        assert configs.config_file(name) == shipped.__file__
        configs.validate(shipped.get_config(), device_count=1, process_count=1)
    assert configs.config_file("tiny:arg") == configs.config_file("tiny") + ":arg"  # get_config's argument kept
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").write_text("")  # an existing file is used as given, even with a shipped config's name
    assert configs.config_file("tiny") == "tiny"


def test_unknown_config_name_lists_the_shipped_ones():
    with pytest.raises(ValueError, match=r"^--config=tiny\.py: no such config file and not a shipped config; give a "
                                         r"path to a config \.py file or one of tiny, owt_small, owt_medium, text8$"):
        configs.config_file("tiny.py")


def test_config_argv_resolves_names_in_every_flag_form():
    from sedd_jax.configs import command_line

    tiny = configs.config_file("tiny")
    argv = ["sedd-train", "--config", "tiny", "--config.training.n_iters=3", "-config=owt_small:x", "--workdir=w",
            "--", "--config=elsewhere"]
    assert command_line.resolve_config_argv(argv) == [
        "sedd-train", "--config", tiny, "--config.training.n_iters=3",
        "-config=" + configs.config_file("owt_small") + ":x", "--workdir=w", "--", "--config=elsewhere"]
    with pytest.raises(ValueError, match="one of tiny, owt_small"):
        command_line.resolve_config_argv(["sedd-train", "--config=small"])


def test_command_line_refuses_unknown_config_in_one_line(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "sedd_jax.main", "--config=small", f"--workdir={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == ("error: --config=small: no such config file and not a shipped config; give a path to a "
                           "config .py file or one of tiny, owt_small, owt_medium, text8\n")
