"""The persistent compilation cache of the command lines (sedd_jax/compilation_cache.py): where it goes, how it is
turned off, its errors, and that a second process loads what the first compiled."""

import os
import subprocess
import sys

import jax
import pytest

from sedd_jax import compilation_cache


@pytest.fixture
def restore_jax_cache():
    """enable() changes process-wide JAX config: put it back so that later tests compile as before."""
    from jax.experimental.compilation_cache import compilation_cache as jax_cache

    before = jax.config.jax_compilation_cache_dir
    yield
    jax.config.update("jax_compilation_cache_dir", before)
    jax_cache.reset_cache()


def test_default_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compilation_cache.default_directory() == str(tmp_path / "xdg" / "sedd_jax" / "xla")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compilation_cache.default_directory() == str(tmp_path / "home" / ".cache" / "sedd_jax" / "xla")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))   # JAX's own variable comes first
    assert compilation_cache.default_directory() == str(tmp_path / "jax")


def test_enable_creates_the_directory_and_empty_turns_it_off(monkeypatch, tmp_path, restore_jax_cache):
    target = tmp_path / "a" / "b"
    assert compilation_cache.enable(str(target)) == str(target)
    assert target.is_dir() and jax.config.jax_compilation_cache_dir == str(target)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "from_env"))
    assert compilation_cache.enable("") is None                               # off, whatever the environment says
    assert jax.config.jax_compilation_cache_dir is None
    assert compilation_cache.enable(None) == str(tmp_path / "from_env")       # None: the default directory
    assert compilation_cache.enable("gs://bucket/xla") == "gs://bucket/xla"   # remote: used as given, not created
    assert not os.path.exists("gs:")


def test_a_directory_that_cannot_be_created_is_an_error_that_says_what_to_do(tmp_path, restore_jax_cache):
    (tmp_path / "file").write_text("in the way")
    before = jax.config.jax_compilation_cache_dir
    with pytest.raises(OSError, match=r"cannot create the compilation cache directory .*file/xla.*"
                                      r"--compilation_cache= to compile without the cache"):
        compilation_cache.enable(str(tmp_path / "file" / "xla"))
    assert jax.config.jax_compilation_cache_dir == before                     # nothing changed
    assert (tmp_path / "file").read_text() == "in the way"


PROGRAM = """
import sys
import jax, jax.numpy as jnp
from sedd_jax import compilation_cache
hits = []
jax.monitoring.register_event_listener(lambda event, **kw: hits.append(event)
                                       if event == "/jax/compilation_cache/cache_hits" else None)
compilation_cache.enable(sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
x = jnp.arange(12.0).reshape(3, 4)
print(float(jax.jit(lambda a: (jnp.sin(a) @ a.T).sum())(x)), len(hits))
"""


def test_a_second_process_loads_the_compiled_program(tmp_path):
    cache = tmp_path / "cache"
    runs = [subprocess.run([sys.executable, "-c", PROGRAM, str(cache)], capture_output=True, text=True, timeout=300)
            for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), [r.stderr[-2000:] for r in runs]
    (value1, hits1), (value2, hits2) = (r.stdout.split() for r in runs)
    assert int(hits1) == 0 and int(hits2) >= 1              # compiled, then loaded
    assert value1 == value2                                  # the same program
    assert any(name.startswith("jit_") for name in os.listdir(cache))
