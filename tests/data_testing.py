"""Shared helpers for the data tests: small configs and temp corpora (no network)."""
import os

import ml_collections


def make_config(tmp_path, **data):
    """A small ConfigDict as the trainer's configs define it (length 32, batch 4)."""
    fields = dict(train="files", valid="files", tokenizer="char", files="",
                  cache_dir=str(tmp_path / "tfds"), sp_vocab_size=256, num_workers=0,
                  download=False)
    fields.update(data)
    return ml_collections.ConfigDict(dict(
        tokens=300, model=dict(length=32), training=dict(batch_size=4, seed=0),
        eval=dict(batch_size=4), data=fields))


WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
         "sigma tau upsilon phi chi psi omega").split()


def write_corpus(directory, num_files=40, words_per_file=60, seed=0):
    """Writes num_files small lowercase text files (text8 alphabet) and returns their glob."""
    import random
    rng = random.Random(seed)
    os.makedirs(directory, exist_ok=True)
    for i in range(num_files):
        text = " ".join(rng.choice(WORDS) for _ in range(words_per_file + i))
        with open(os.path.join(directory, f"doc{i:03d}.txt"), "w") as f:
            f.write(text)
    return os.path.join(str(directory), "*.txt")
