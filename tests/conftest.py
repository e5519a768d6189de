import pytest

from edgecache import CacheConfig, MemoryStore, SemanticCache
from tests.helpers import Clock, HashingEmbedder


@pytest.fixture
def embedder() -> HashingEmbedder:
    return HashingEmbedder()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def config() -> CacheConfig:
    return CacheConfig(threshold=0.9, followup_threshold=0.8, context_threshold=0.9)


@pytest.fixture
def make_cache(embedder, clock, config):
    def make(user: str = "alice", store=None, **overrides) -> SemanticCache:
        cfg = CacheConfig.from_dict({**config.to_dict(), **overrides}) if overrides else config
        return SemanticCache(user, store=store or MemoryStore(), config=cfg, embedder=embedder, clock=clock)

    return make
