"""Atomic data-file writes (`sedd_jax.files.atomic_write`): errors, interrupts, SIGTERM and a full disk.

The full-disk tests write to a real 64 KiB tmpfs mounted under tmp_path (needs root or CAP_SYS_ADMIN;
skipped, saying so, only where mounting is not permitted).
"""
import contextlib
import errno
import io
import os
import pathlib
import pickle
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sedd_jax import data, files
from sedd_jax.data import datasets, packing, sources, tokenizers
from tests.data_testing import make_config, write_corpus
from tests.tmpfs_testing import tmpfs

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tmp_files(directory):
    return sorted(p for p in os.listdir(directory) if ".tmp-" in p)


# ------------------------------------------------------------------------- errors and interrupts

def test_atomic_write_success(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    with files.atomic_write(str(path)) as f:
        f.write(b"new")
        assert path.read_bytes() == b"old"  # not visible before the end
    assert path.read_bytes() == b"new"
    with files.atomic_write(str(tmp_path / "b.txt"), str(tmp_path / "c.txt"), mode="w") as (fb, fc):
        fb.write("b")
        fc.write("c")
    assert (tmp_path / "b.txt").read_text() == "b" and (tmp_path / "c.txt").read_text() == "c"
    assert _tmp_files(tmp_path) == []


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt(), SystemExit(143)],
                         ids=["RuntimeError", "KeyboardInterrupt", "SystemExit"])
@pytest.mark.parametrize("previous", [False, True], ids=["new", "replacing"])
def test_interrupted_write_leaves_nothing(tmp_path, exc, previous):
    paths = [tmp_path / "x.tokens.bin", tmp_path / "x.offsets.bin", tmp_path / "single.bin"]
    if previous:
        for p in paths:
            p.write_bytes(b"previous " + p.name.encode())
    with pytest.raises(type(exc)):
        with files.atomic_write(str(paths[0]), str(paths[1])) as (f0, f1):
            f0.write(b"x" * 100_000)  # past the buffer: really on disk
            f1.write(b"y")
            assert len(_tmp_files(tmp_path)) == 2
            raise exc
    with pytest.raises(type(exc)):
        with files.atomic_write(str(paths[2])) as f:
            f.write(b"z" * 10)
            raise exc
    assert _tmp_files(tmp_path) == []
    for p in paths:
        if previous:
            assert p.read_bytes() == b"previous " + p.name.encode()
        else:
            assert not p.exists()


@pytest.mark.parametrize("exc", [ValueError, KeyboardInterrupt])
def test_interrupted_tokenization_leaves_nothing(tmp_path, exc):
    def docs():
        for i in range(5000):
            if i == 3000:
                raise exc()
            yield "abc def ghi " * 10

    prefix = str(tmp_path / "cache" / "c")
    with pytest.raises(exc):
        packing.write_tokenized(docs(), tokenizers.CharTokenizer(), prefix, chunk_size=100)
    assert os.listdir(tmp_path / "cache") == []
    assert packing.load_tokenized(prefix) is None


def test_no_other_temporary_file_writers():
    """Every data writer goes through atomic_write: no hand-rolled tmp + os.replace elsewhere."""
    for path in (REPO / "sedd_jax" / "data").glob("*.py"):
        text = path.read_text()
        assert "os.replace" not in text and "os.rename" not in text and ".tmp" not in text, path


# ------------------------------------------------------------------------- a full disk (tmpfs)

@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs mounted at tmp_path/"small" (unmounted in teardown)."""
    with tmpfs(tmp_path / "small", "64k") as target:
        yield target


def _check_disk_full(excinfo, path, mount):
    err = excinfo.value
    message = str(err)
    assert isinstance(err, OSError) and isinstance(err, data.DiskFullError)
    assert err.errno == errno.ENOSPC
    assert isinstance(err.__cause__, OSError) and err.__cause__.errno == errno.ENOSPC
    assert "\n" not in message and len(message) < 400, message
    assert message.startswith(f"no space left on device writing {path} ("), message
    assert f"MiB free on {mount}):" in message, message
    assert message.endswith(", then rerun"), message
    copy = pickle.loads(pickle.dumps(err))
    assert (type(copy), str(copy), copy.errno, copy.path) == (type(err), message, err.errno, err.path)
    return message


def _fill(directory):
    """Fills the disk of `directory` (a filler file); returns its path."""
    filler = os.path.join(directory, "filler")
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        for _ in range(1000):
            f.write(b"\0" * 4096)
    return filler


def test_disk_full_is_one_line_and_leaves_nothing(full_disk):
    path = full_disk / "big.bin"
    with pytest.raises(files.DiskFullError) as excinfo:
        with files.atomic_write(str(path)) as f:
            for _ in range(64):
                f.write(b"\1" * 16384)
    message = _check_disk_full(excinfo, path, full_disk)
    assert "--config.data.cache_dir" in message
    assert os.listdir(full_disk) == []


def test_disk_full_when_finishing_keeps_the_previous_file(full_disk):
    """A payload that fits in the write buffer fails at flush, after the body: same error, old file kept."""
    path = full_disk / "model.bin"
    path.write_bytes(b"previous")
    _fill(full_disk)
    with pytest.raises(files.DiskFullError) as excinfo:
        with files.atomic_write(str(path), hint="free space there or use a --workdir on another disk, "
                                "then rerun") as f:
            f.write(b"\1" * 100)
    message = _check_disk_full(excinfo, path, full_disk)
    assert "--workdir" in message
    assert path.read_bytes() == b"previous"
    assert sorted(os.listdir(full_disk)) == ["filler", "model.bin"]


def test_disk_full_names_leftover_temporary_files(full_disk):
    """Temporary files of killed writers are mentioned (not deleted: another host may be writing them)."""
    leftover = full_disk / "old.bin.tmp-otherhost-123"
    leftover.write_bytes(b"\0" * 20000)
    with pytest.raises(files.DiskFullError, match=r"also holds 1 \*\.tmp-\* file\(s\)") as excinfo:
        with files.atomic_write(str(full_disk / "new.bin")) as f:
            f.write(b"\1" * 100_000)
    assert "\n" not in str(excinfo.value)
    assert os.listdir(full_disk) == [leftover.name]


def test_packing_on_a_full_disk(full_disk):
    """The token cache writer: one-line error, no .tokens.bin/.offsets.bin/.json and no temporary file."""
    rng = np.random.default_rng(0)
    docs = [" ".join("abcdefgh"[: rng.integers(1, 8)] for _ in range(100)) for _ in range(300)]
    prefix = str(full_disk / "c")
    with pytest.raises(files.DiskFullError) as excinfo:
        packing.write_tokenized(docs, tokenizers.CharTokenizer(), prefix, chunk_size=50)
    message = _check_disk_full(excinfo, prefix + ".{tokens.bin,offsets.bin}", full_disk)
    assert "--config.data.cache_dir" in message
    assert os.listdir(full_disk) == []
    assert packing.load_tokenized(prefix) is None


def test_load_corpus_on_a_full_cache_dir(tmp_path, full_disk):
    """End to end from the config: the cache under data.cache_dir does not fit."""
    config = make_config(tmp_path, cache_dir=str(full_disk),
                         files=write_corpus(tmp_path / "corpus", num_files=40, words_per_file=400))
    tok = datasets.get_tokenizer(config)
    with pytest.raises(data.DiskFullError, match="^no space left on device writing .*"
                       r"--config\.data\.cache_dir elsewhere, then rerun$") as excinfo:
        datasets.load_corpus(config, None, "files", "train", tok)
    assert "\n" not in str(excinfo.value)
    cache = full_disk / "sedd_jax_tokenized"
    assert os.listdir(cache) == []


def test_download_on_a_full_disk_is_not_a_network_error(tmp_path, full_disk, monkeypatch):
    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    import urllib.request
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Response(b"{}\n" * 100_000))
    config = make_config(tmp_path, train="lambada", valid="lambada", cache_dir=str(full_disk),
                         download=True)
    with pytest.raises(data.DiskFullError) as excinfo:
        sources._local_file("lambada", config)
    _check_disk_full(excinfo, full_disk / "lambada" / "lambada_test.jsonl", full_disk)
    assert os.listdir(full_disk / "lambada") == []


def test_sentencepiece_model_on_a_full_workdir(full_disk):
    pytest.importorskip("sentencepiece")
    _fill(full_disk)
    path = full_disk / "tokenizer" / "sp.model"
    texts = ["the quick brown fox jumps over the lazy dog %d\n" % i for i in range(2000)]
    with pytest.raises(data.DiskFullError) as excinfo:
        tokenizers.train_sentencepiece(texts, 300, str(path))
    message = _check_disk_full(excinfo, path, full_disk)
    assert "--workdir" in message
    assert os.listdir(full_disk / "tokenizer") == []


# ------------------------------------------------------------------------- SIGTERM

SIGTERM_WRITER = textwrap.dedent("""
    import signal, sys, time
    from sedd_jax import files

    def on_sigterm(signum, frame):  # what the trainer installs during setup
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, on_sigterm)
    with files.atomic_write(sys.argv[1]) as f:
        for i in range(600):
            f.write(b"x" * 100_000)
            f.flush()
            if i == 0:
                print("writing", flush=True)
            time.sleep(0.1)
    print("finished", flush=True)
""")


def test_sigterm_during_a_write_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "out.bin"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_WRITER, str(path)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "writing\n", proc.stderr.read()
        assert len(_tmp_files(tmp_path)) == 1  # the write is under way
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert "finished" not in out
    assert os.listdir(tmp_path) == []
