"""Shared fixtures: one Ray for the whole session, real data when present, test media."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fer_batch.train.cpu import cap_onednn_isa

# Tests train models in this process: cap oneDNN before any TensorFlow op runs.
cap_onednn_isa()

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "realdata" in item.keywords and not SHARED_DATA.is_dir():
            item.add_marker(pytest.mark.skip(reason=f"real data not found at {SHARED_DATA}"))
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skipif(
                not _gpu_visible(), reason="no GPU visible to this machine"))


def _gpu_visible() -> bool:
    return os.path.exists("/dev/nvidia0")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray (2 CPUs) shared by every test that needs it; ~6 s to start."""
    import ray

    if not ray.is_initialized():
        # address='local': never join a cluster someone started on this machine.
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA
