"""Shared test fixtures: the reference parity data and the tiny official-format checkpoint."""

import pathlib

import numpy as np
import pytest

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
TINY_CHECKPOINT = FIXTURES / "sedd_tiny_absorb_hf"


@pytest.fixture(scope="session")
def parity():
    """The reference outputs of ../shared/fixtures/sedd_parity_absorb.npz (see its README)."""
    return dict(np.load(FIXTURES / "sedd_parity_absorb.npz"))
