"""Shared test setup: paths to ../shared, one CPU thread (the reference fixtures were made with one)."""

import os
import pathlib

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("THREEAM_SHARED", REPO.parent / "shared"))

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    if not SHARED.is_dir():
        pytest.fail(f"the shared reference data is missing: expected {SHARED}")
    return SHARED


def pytest_report_header(config):
    return [f"ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID')} isolated={os.environ.get('THREEAM_ISOLATED')}"]


@pytest.fixture(autouse=True)
def _restore_torch_grad_mode():
    # Entry points called in-process (CLI main()) may switch autograd off globally; never let that leak.
    enabled = torch.is_grad_enabled()
    yield
    torch.set_grad_enabled(enabled)
