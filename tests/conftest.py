import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Tiny test models gain nothing from intra-op threads on two cores and lose a lot
# when processes compete for them; one thread keeps the suite fast and steady.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
# tiny test models and tokenizers are built once and cached inside the checkout, not in $HOME
os.environ.setdefault("LLM_ST_CACHE", str(REPO / ".cache" / "llm_st"))
os.environ.setdefault("LLM_ST_DATA", str(REPO.parent / "shared" / "data"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` need a CUDA GPU: skipped (with the reason) on a machine without
    one. Every other test must run on the CPU even where a GPU is visible: the package's
    defaults are ``"auto"`` (the GPU when there is one), so a test that builds a model, a
    trainer or a pipeline passes ``device="cpu"`` (``training.device=cpu`` in a recipe,
    ``--device cpu`` on the command line)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none is visible)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


def shared_data_dir() -> Path:
    return Path(os.environ.get("LLM_ST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"real benchmark files not found at {root} (set LLM_ST_DATA)")
    return root


@pytest.fixture(autouse=True)
def one_thread():
    """Every test runs on one torch thread and leaves the count as it found it (a test or a
    bench helper may change it): tiny models gain nothing from threads on two shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def pretrained_test_lm() -> Path:
    """The small forecasting LM of ``alignment/pretrain/st_lm_test.yaml`` (a few seconds of
    pre-training on synthetic series): a Hugging Face model directory that fine-tuning
    tests start from. Built once into the tests' cache (``$LLM_ST_CACHE/models``, keyed by
    the recipe's text, see :func:`llm_st.pipeline.pretrain.pretrained_lm`) and reused by
    later sessions."""
    from llm_st.pipeline.pretrain import pretrained_test_lm as build

    return build()
