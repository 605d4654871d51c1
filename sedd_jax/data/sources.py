"""Raw text per dataset: the document stream of one split, detokenized, before tokenization.

`load_documents(name, split, config)` yields the documents (str) of a split; one EOS is later
appended after each document (§6.3). Splits are "train", "validation", "test";
`DATASETS[name].eval_split` is the split used when a dataset is `config.data.valid`.

| name        | source                                             | document      | splits (eval)      |
|-------------|----------------------------------------------------|---------------|--------------------|
| pystdlib    | .py files of this Python's standard library        | a file        | train/validation   |
| files       | local text files, glob `config.data.files`         | a file        | train/validation   |
| text8       | `config.data.files` or `<cache_dir>/text8/text8`    | a whole split | 90M/5M/5M chars    |
| openwebtext | TFDS `huggingface:openwebtext`, prepared once      | a web page    | train/validation   |
| wikitext2   | TFDS `huggingface:wikitext/wikitext-2-raw-v1`      | a line        | train/val/test (v) |
| wikitext103 | TFDS `huggingface:wikitext/wikitext-103-raw-v1`    | a line        | train/val/test (v) |
| ptb         | TFDS `huggingface:ptb_text_only/penn_treebank`     | a sentence    | train/val/test (v) |
| lm1b        | TFDS `lm1b`                                        | a sentence    | train/test (test)  |
| lambada     | OpenAI's `lambada_test.jsonl`                      | a passage     | test               |
| ag_news     | TFDS `ag_news_subset`, title + " " + description   | a news item   | train/test (test)  |
| pubmed      | TFDS `scientific_papers/pubmed`, field `article`   | an article    | train/val/test (v) |
| arxiv       | TFDS `scientific_papers/arxiv`, field `article`    | an article    | train/val/test (v) |

ag_news, pubmed and arxiv are the extra zero-shot sets of MDLM's table (Sahoo et al. 2024); their
text is what MDLM's `dataloader.py` reads from Hugging Face: `ag_news` "text" is title + " " +
description of the same CSV, and `scientific_papers` "article" is the same "\n"-joined paragraphs
(the TFDS and Hugging Face builders build it identically). TFDS stores examples in a hashed order, not
the file order, so block boundaries differ from MDLM's (docs/evaluation.md).

Deterministic splits of local corpora ("pystdlib", "files"): a file is in "validation" iff
crc32(its path relative to the corpus root, "/"-separated) % 100 < 2 (about 2%); the rest is
"train". "files" falls back, when that leaves validation empty, to the file with the smallest crc32
(two or more files) or to the last 2% of the characters of a single file (cut at a line start).
"pystdlib" walks `sysconfig.get_paths()["stdlib"]` and skips the directories site-packages,
dist-packages, test, tests, idle_test and __pycache__; its content depends on the Python version.
openwebtext has only a train split upstream; its "validation" is the documents with
crc32(text) % 1000 == 0 (about 0.1%, excluded from "train").

TFDS datasets are read from `config.data.cache_dir` (the TFDS data_dir). Hugging Face datasets are
read with `tfds.builder_from_directory` once prepared, so no network and no `datasets` package are
needed after the first preparation; a dataset that is not there is downloaded and prepared when
`config.data.get("download", True)`, and a failure (no network) raises DatasetUnavailableError
saying what to pre-download and where.
"""
from __future__ import annotations

import dataclasses
import glob as glob_lib
import importlib.util
import json
import os
import sysconfig
import zlib
from typing import Iterator, List, Optional, Sequence, Tuple, Union

from sedd_jax import extras, files
from sedd_jax.data import detokenizers

SPLITS = ("train", "validation", "test")
EVAL_PERCENT = 2
PYSTDLIB_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
LAMBADA_URL = "https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl"
TEXT8_URL = "http://mattmahoney.net/dc/text8.zip"


class DatasetUnavailableError(RuntimeError):
    """A dataset must be downloaded or prepared first; the message says how and where."""


def describe_failure(error: BaseException, limit: int = 200) -> str:
    """`Type: message` of a failed download on one line, at most `limit` characters: what the one-line errors
    quote instead of chaining the cause (a urllib3/requests traceback of a hundred lines)."""
    text = f"{type(error).__name__}: {' '.join(str(error).split())}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    kind: str                      # "tfds" | "pystdlib" | "files" | "text8" | "lambada"
    splits: Tuple[str, ...]
    eval_split: str
    tfds_name: str = ""
    field: Union[str, Tuple[str, ...]] = "text"  # several fields: joined with " "
    detokenizer: str = "none"
    shuffle_documents: bool = False  # seeded document order before packing (small corpora)
    tokenizer: Optional[str] = None  # a required tokenizer kind, if any
    holdout_per_mille: int = 0       # tfds train split minus a crc32 holdout as "validation"
    needs_prepare: bool = False      # too big to tokenize at startup: `python -m sedd_jax.data.prepare`


_TVT = ("train", "validation", "test")
DATASETS = {
    s.name: s for s in (
        DatasetSpec("pystdlib", "pystdlib", ("train", "validation"), "validation",
                    shuffle_documents=True),
        DatasetSpec("files", "files", ("train", "validation"), "validation",
                    shuffle_documents=True),
        DatasetSpec("text8", "text8", _TVT, "validation", tokenizer="char"),
        DatasetSpec("openwebtext", "tfds", ("train", "validation"), "validation",
                    tfds_name="huggingface:openwebtext", holdout_per_mille=1,
                    needs_prepare=True),
        DatasetSpec("wikitext2", "tfds", _TVT, "validation",
                    tfds_name="huggingface:wikitext/wikitext-2-raw-v1", detokenizer="wikitext"),
        DatasetSpec("wikitext103", "tfds", _TVT, "validation",
                    tfds_name="huggingface:wikitext/wikitext-103-raw-v1", detokenizer="wikitext"),
        DatasetSpec("ptb", "tfds", _TVT, "validation",
                    tfds_name="huggingface:ptb_text_only/penn_treebank", field="sentence",
                    detokenizer="ptb"),
        DatasetSpec("lm1b", "tfds", ("train", "test"), "test", tfds_name="lm1b",
                    detokenizer="lm1b"),
        DatasetSpec("lambada", "lambada", ("test",), "test", detokenizer="lambada"),
        DatasetSpec("ag_news", "tfds", ("train", "test"), "test", tfds_name="ag_news_subset",
                    field=("title", "description")),
        DatasetSpec("pubmed", "tfds", _TVT, "validation", tfds_name="scientific_papers/pubmed",
                    field="article", detokenizer="scientific_papers"),
        DatasetSpec("arxiv", "tfds", _TVT, "validation", tfds_name="scientific_papers/arxiv",
                    field="article", detokenizer="scientific_papers"),
    )
}


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


def _check_split(spec: DatasetSpec, split: str) -> None:
    if split not in spec.splits:
        raise ValueError(f"dataset {spec.name!r} has no split {split!r}; it has {spec.splits}")


def _cache_dir(config) -> str:
    return os.path.expanduser(config.data.get("cache_dir", None) or "~/tensorflow_datasets")


def _allow_download(config) -> bool:
    return bool(config.data.get("download", True))


def _bucket(key: str, modulus: int) -> int:
    return zlib.crc32(key.encode("utf-8")) % modulus


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


# ------------------------------------------------------------------------- local corpora

def pystdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def list_pystdlib_files(root: Optional[str] = None) -> List[str]:
    """Sorted relative paths ("/"-separated) of the standard library's .py files."""
    root = root or pystdlib_root()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in PYSTDLIB_SKIP_DIRS)
        rel = os.path.relpath(dirpath, root)
        for f in sorted(filenames):
            if f.endswith(".py"):
                out.append(f if rel == "." else f"{rel}/{f}".replace(os.sep, "/"))
    return sorted(out)


def split_paths(rel_paths: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(train, validation) by crc32(relative path) % 100 < EVAL_PERCENT."""
    train = [p for p in rel_paths if _bucket(p, 100) >= EVAL_PERCENT]
    valid = [p for p in rel_paths if _bucket(p, 100) < EVAL_PERCENT]
    return train, valid


def _glob_root(pattern: str) -> str:
    parts = []
    for part in pattern.split(os.sep):
        if glob_lib.has_magic(part):
            break
        parts.append(part)
    root = os.sep.join(parts)
    if root == pattern:  # no wildcard: a single file
        root = os.path.dirname(pattern)
    return root or "."


def _files_documents(config, split: str) -> List[str]:
    pattern = config.data.get("files", None)
    if not pattern:
        raise ValueError("dataset 'files' needs --config.data.files=<glob of text files>")
    pattern = os.path.expanduser(pattern)
    paths = sorted(p for p in glob_lib.glob(pattern, recursive=True) if os.path.isfile(p))
    if not paths:
        raise FileNotFoundError(f"config.data.files={pattern!r} matches no files")
    root = _glob_root(pattern)
    rel = {os.path.relpath(p, root).replace(os.sep, "/"): p for p in paths}
    if len(rel) == 1:  # one file: the last 2% of its characters, cut at a line start
        text = _read_text(paths[0])
        cut = int(len(text) * (100 - EVAL_PERCENT) / 100)
        nl = text.rfind("\n", 0, cut)
        cut = nl + 1 if nl > 0 else cut
        return [text[:cut]] if split == "train" else [text[cut:]]
    train, valid = split_paths(sorted(rel))
    if not valid:
        valid = [min(sorted(rel), key=lambda p: _bucket(p, 1 << 32))]
        train = [p for p in sorted(rel) if p not in valid]
    return [_read_text(rel[p]) for p in (train if split == "train" else valid)]


def _pystdlib_documents(split: str) -> List[str]:
    root = pystdlib_root()
    train, valid = split_paths(list_pystdlib_files(root))
    return [_read_text(os.path.join(root, p)) for p in (train if split == "train" else valid)]


def corpus_fingerprint(name: str, config) -> str:
    """A short hash that changes when a local corpus changes (paths, sizes, mtimes)."""
    if name == "pystdlib":
        root = pystdlib_root()
        paths = [os.path.join(root, p) for p in list_pystdlib_files(root)]
    elif name == "files":
        pattern = os.path.expanduser(config.data.get("files", "") or "")
        paths = sorted(glob_lib.glob(pattern, recursive=True))
    elif name in ("text8", "lambada"):
        paths = [_local_file(name, config)]
    else:
        return "0"
    h = zlib.crc32(b"")
    for p in paths:
        st = os.stat(p)
        h = zlib.crc32(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode(), h)
    return f"{h:08x}"


# ------------------------------------------------------------------------- single files

def _local_file(name: str, config) -> str:
    """The path of text8's or lambada's file: config.data.files if it names that file, else
    <cache_dir>/<name>/<file>. Downloaded there if missing and allowed."""
    fname = "text8" if name == "text8" else "lambada_test.jsonl"
    given = config.data.get("files", None)
    if given and os.path.basename(os.path.expanduser(given)) == fname:
        path = os.path.expanduser(given)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{name}: config.data.files={given!r} does not exist")
        return path
    path = os.path.join(_cache_dir(config), name, fname)
    if os.path.exists(path):
        return path
    url = TEXT8_URL if name == "text8" else LAMBADA_URL
    how = (f"  mkdir -p {os.path.dirname(path)} && cd {os.path.dirname(path)} && "
           + (f"wget {url} && unzip text8.zip" if name == "text8" else f"wget {url}"))
    if not _allow_download(config):
        raise DatasetUnavailableError(
            f"{name} is not in {path} and downloads are off (config.data.download=False). "
            f"Pre-download it:\n{how}\nor point --config.data.files at the file.")
    try:
        _download(url, path)
    except files.DiskFullError:
        raise
    except Exception as e:  # no network
        raise DatasetUnavailableError(
            f"could not download {name} from {url} ({describe_failure(e)}). Pre-download it on a "
            f"machine with network into {os.path.dirname(path)}:\n{how}\n"
            "or point --config.data.files at the file.") from None
    return path


def _download(url: str, path: str) -> None:
    import io
    import urllib.request
    import zipfile
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with urllib.request.urlopen(url, timeout=60) as r:
        payload = r.read()
    if url.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(payload)) as z:
            payload = z.read(os.path.basename(path))
    with files.atomic_write(path) as f:
        f.write(payload)


def text8_split_bounds(n_chars: int) -> dict:
    """90% / 5% / 5% character ranges (90M/5M/5M for the real 100M-character file)."""
    a, b = n_chars * 90 // 100, n_chars * 95 // 100
    return {"train": (0, a), "validation": (a, b), "test": (b, n_chars)}


def _text8_documents(config, split: str) -> List[str]:
    text = _read_text(_local_file("text8", config)).strip("\n")
    lo, hi = text8_split_bounds(len(text))[split]
    return [text[lo:hi]]


def _lambada_documents(config) -> List[str]:
    path = _local_file("lambada", config)
    docs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                docs.append(json.loads(line)["text"])
    return docs


# ------------------------------------------------------------------------- TFDS

def _tfds(module: str = "tensorflow_datasets"):
    """tensorflow_datasets or one of its modules (TensorFlow imported first, quietly), or an ImportError naming
    the `train` extra."""
    return extras.require(module, "reading TFDS datasets (openwebtext, wikitext, ptb, lm1b, ...)")


def _prepared_hf_dir(tfds_name: str, data_dir: str) -> Optional[str]:
    """The newest prepared directory of a `huggingface:repo/config` dataset in data_dir."""
    conversion_utils = _tfds("tensorflow_datasets.core.utils.conversion_utils")
    repo, _, hf_config = tfds_name.split(":", 1)[1].partition("/")
    base = os.path.join(data_dir, conversion_utils.to_tfds_name(repo))
    if hf_config:
        base = os.path.join(base, conversion_utils.to_tfds_name(hf_config))
    found = sorted(glob_lib.glob(os.path.join(base, "*", "dataset_info.json")))
    return os.path.dirname(found[-1]) if found else None


def _pre_download_hint(tfds_name: str, data_dir: str) -> str:
    extra = "pip install datasets  # Hugging Face datasets, for the huggingface: builder\n  " \
        if tfds_name.startswith("huggingface:") else ""
    name = next((s.name for s in DATASETS.values() if s.tfds_name == tfds_name), None)
    prepare = (f"python -m sedd_jax.data.prepare --config=<your config> --dataset={name}  # or:\n  "
               if name else "")
    return (f"Pre-download it once on a machine with network (then copy {data_dir} here):\n  {extra}{prepare}"
            f"python -c \"import tensorflow_datasets as tfds; tfds.builder('{tfds_name}', "
            f"data_dir='{data_dir}').download_and_prepare()\"")


def tfds_builder(tfds_name: str, data_dir: str, allow_download: bool = True):
    """A prepared TFDS builder; prepares it (download) when allowed, else explains what to do."""
    tfds = _tfds()
    if tfds_name.startswith("huggingface:"):
        prepared = _prepared_hf_dir(tfds_name, data_dir)
        if prepared:
            return tfds.builder_from_directory(prepared)
        builder = None
    else:
        builder = tfds.builder(tfds_name, data_dir=data_dir)
        if builder.is_prepared():
            return builder
    if not allow_download:
        raise DatasetUnavailableError(
            f"TFDS dataset {tfds_name!r} is not prepared in {data_dir} and downloads are off "
            f"(config.data.download=False). " + _pre_download_hint(tfds_name, data_dir))
    if builder is None and importlib.util.find_spec("datasets") is None:  # else TFDS prints a banner, then fails
        raise DatasetUnavailableError(
            f"TFDS dataset {tfds_name!r} is not prepared in {data_dir}, and preparing it needs the Hugging Face "
            "`datasets` package (not installed). " + _pre_download_hint(tfds_name, data_dir))
    try:
        if builder is None:
            builder = tfds.builder(tfds_name, data_dir=data_dir)
        builder.download_and_prepare()
    except Exception as e:  # no network, ...: `from None`, the cause is a long download traceback
        raise DatasetUnavailableError(
            f"could not download/prepare TFDS dataset {tfds_name!r} into {data_dir} "
            f"({describe_failure(e)}). " + _pre_download_hint(tfds_name, data_dir)) from None
    return builder


def tfds_texts(builder, split: str, field: Union[str, Sequence[str]]) -> Iterator[str]:
    """The `field` strings of a split of a TFDS builder, in the stored order; several fields are
    joined with one space (ag_news: title + " " + description, as Hugging Face's `ag_news`)."""
    tfds = _tfds()
    fields = (field,) if isinstance(field, str) else tuple(field)
    ds = builder.as_dataset(split=split, shuffle_files=False)
    for example in tfds.as_numpy(ds):
        values = [example[f] for f in fields]
        yield " ".join(v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values)


def _tfds_documents(spec: DatasetSpec, config, split: str) -> Iterator[str]:
    builder = tfds_builder(spec.tfds_name, _cache_dir(config), _allow_download(config))
    source_split = "train" if spec.holdout_per_mille else split
    for text in tfds_texts(builder, source_split, spec.field):
        if spec.holdout_per_mille:
            held_out = _bucket(text, 1000) < spec.holdout_per_mille
            if held_out != (split == "validation"):
                continue
        yield text


# ------------------------------------------------------------------------- entry point

def load_documents(name: str, split: str, config) -> Iterator[str]:
    """Yields the detokenized documents of `split` of dataset `name` (deterministic order)."""
    spec = get_spec(name)
    _check_split(spec, split)
    if spec.kind == "pystdlib":
        docs = _pystdlib_documents(split)
    elif spec.kind == "files":
        docs = _files_documents(config, split)
    elif spec.kind == "text8":
        docs = _text8_documents(config, split)
    elif spec.kind == "lambada":
        docs = _lambada_documents(config)
    else:
        docs = _tfds_documents(spec, config, split)
    detok = detokenizers.DETOKENIZERS[spec.detokenizer]
    for doc in docs:
        yield detok(doc)
