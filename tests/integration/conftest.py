import pytest

from edgecache import CacheConfig
from edgecache.embedder import shared_embedder

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def real_embedder():
    """The built int8 encoder + shipped default projection (scripts/setup builds the model)."""
    return shared_embedder(CacheConfig().projection)
