import pytest

from edgecache import CacheConfig
from edgecache.embedder import shared_embedder

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def real_embedder():
    """The built int8 encoder + shipped default projection (scripts/setup builds the model)."""
    return shared_embedder(CacheConfig().projection)


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct as a `LoadedModel`: built into EDGECACHE_HOME on first use (~1.5 min
    from the packaged GGUF, `edgecache llm build`), then loaded from safetensors (~2 s)."""
    pytest.importorskip("torch")
    pytest.importorskip("kvpress")
    from edgecache.llm.model import ensure_packaged_model, load_model

    ensure_packaged_model(progress=lambda _line: None)
    return load_model()
