"""Data: datasets, tokenizers, detokenizers, packing and the grain input pipeline (docs/data.md).

    from sedd_jax import data
    bundle = data.create_datasets(config, workdir)        # process_index/count: jax's by default
    batch = next(bundle.train_iter)                       # int32 [batch_size // process_count, L]
    state = bundle.train_iter.get_state()                 # JSON dict; set_state(state) resumes
    tok = data.get_tokenizer(config, workdir)             # encode / decode / vocab_size / eos_id

Each process gets its own shard; the trainer builds the global batch with
`jax.make_array_from_process_local_data(sharding, next(bundle.train_iter))`.

Config fields read (ml_collections.ConfigDict):
  tokens               int  model vocabulary; the tokenizer's ids (EOS included) must fit: <= tokens
  model.length         int  block length L (tokens per sequence)
  training.batch_size  int  global train batch (divisible by the process count)
  eval.batch_size      int  global eval batch (divisible by the process count)
  training.seed        int  shuffling seed: epoch e of train uses seed + e, eval seed + 1 + e;
                            also the document-order seed of local corpora (unless data.seed)
  data.train           str  train dataset: pystdlib | openwebtext | wikitext2 | wikitext103 | ptb |
                            lm1b | lambada | ag_news | pubmed | arxiv | text8 | files
                            (sources.DATASETS)
  data.valid           str  eval dataset (its eval split: validation, or test where there is none)
  data.tokenizer       str  sentencepiece | gpt2 | char
  data.files           str  glob of text files for "files"; or the path of the text8 file /
                            lambada_test.jsonl for those datasets
  data.cache_dir       str  TFDS data_dir, downloads and gpt2/char token caches
                            (default ~/tensorflow_datasets)
  data.sp_vocab_size   int  SentencePiece vocabulary (e.g. 4096 for the tiny config)
  data.num_workers     int  grain worker processes (0: read in the training process)
  data.download        bool optional, default True: download missing datasets (False: error
                            saying what to pre-download)
  data.seed            int  optional document-order seed (default training.seed)

Caches and downloads are written atomically (no partial or temporary files after an error, Ctrl-C or
SIGTERM); a full disk raises DiskFullError (an OSError) with a one-line message naming the path.

Importing this package imports neither TensorFlow nor TFDS nor grain; they are imported when used, and a
missing one is an ImportError naming the extra that installs it (`pip install "sedd-jax[train]"`).
"""
from sedd_jax.files import DiskFullError
from sedd_jax.data.datasets import (DataBundle, create_datasets, get_tokenizer, load_blocks,
                                    load_corpus)
from sedd_jax.data.detokenizers import (lambada_detokenizer, lm1b_detokenizer, ptb_detokenizer,
                                        wt_detokenizer)
from sedd_jax.data.packing import TokenizedCorpus, pack, tokenize_documents
from sedd_jax.data.pipeline import make_dataset, make_iterator
from sedd_jax.data.sources import DATASETS, DatasetUnavailableError, load_documents
from sedd_jax.data.tokenizers import Tokenizer

__all__ = [
    "DATASETS", "DataBundle", "DatasetUnavailableError", "DiskFullError", "TokenizedCorpus",
    "Tokenizer", "create_datasets", "get_tokenizer", "lambada_detokenizer", "lm1b_detokenizer",
    "load_blocks", "load_corpus", "load_documents", "make_dataset", "make_iterator", "pack",
    "ptb_detokenizer", "tokenize_documents", "wt_detokenizer",
]
