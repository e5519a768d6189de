"""The default categories with the real encoder and the cache's 64-d projection."""

from __future__ import annotations

from edgecache.classifier import CategoryClassifier


def test_obvious_queries_land_in_their_default_category(real_embedder):
    clf = CategoryClassifier(real_embedder)
    queries = {
        "write a python function to reverse a list": "code",
        "hi how are you": "small_talk",
        "what's the weather tomorrow in Paris": "time_sensitive",
        "how much money is in my checking account": "personal",
    }
    vectors = real_embedder.embed(list(queries)).vectors  # the vectors the cache computes anyway
    assert clf.classify_vectors(vectors) == list(queries.values())
