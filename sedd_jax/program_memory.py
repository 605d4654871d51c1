"""The memory of a compiled program per device, and bytes written for people. Core only (no training extra),
so that `sedd_jax.compile` and the benchmarks use it on machines without TensorFlow or clu."""

from __future__ import annotations


def format_bytes(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def memory_summary(compiled) -> dict | None:
    """Per-device bytes of a compiled program: {"arguments", "outputs", "temporaries", "total"}, where total
    counts donated arguments once (they are updated in place). None where the backend does not say."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return dict(arguments=analysis.argument_size_in_bytes, outputs=analysis.output_size_in_bytes,
                temporaries=analysis.temp_size_in_bytes,
                total=(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                       + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes))
