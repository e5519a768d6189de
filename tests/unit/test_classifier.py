"""CategoryClassifier with a bag-of-words hashing embedder: no model, deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from edgecache.classifier import DEFAULT_SEEDS, CategoryClassifier, seed_texts
from edgecache.errors import ConfigError, InvalidInputError
from tests.helpers import HashingEmbedder

SEEDS = {
    "fruit": ["apple banana", "banana cherry", "apple cherry"],
    "car": ["engine wheel", "wheel brake", "engine brake"],
}


@pytest.fixture
def emb() -> HashingEmbedder:
    return HashingEmbedder(dim=512)


@pytest.fixture
def clf(emb) -> CategoryClassifier:
    return CategoryClassifier(emb, SEEDS, method="prototype")


def test_prototypes_are_normalised_means_of_seed_vectors(emb, clf):
    assert clf.categories == ("fruit", "car")
    for j, cat in enumerate(clf.categories):
        mean = emb.embed(SEEDS[cat]).vectors.mean(axis=0)
        np.testing.assert_allclose(clf.prototypes[j], mean / np.linalg.norm(mean), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(clf.prototypes, axis=1), 1.0, atol=1e-6)


def test_classifies_by_nearest_prototype_and_scores_are_one_matrix_product(emb, clf):
    v = emb.embed(["banana apple", "brake wheel", "cherry"]).vectors
    assert clf.classify_vectors(v) == ["fruit", "car", "fruit"]
    scores = clf.scores(v)
    assert scores.shape == (3, 2)
    np.testing.assert_allclose(scores, v @ clf.prototypes.T, atol=1e-6)
    assert clf.classify(["apple", "engine"]) == ["fruit", "car"]


def test_one_vector_and_empty_batch(emb, clf):
    v = emb.embed(["apple"]).vectors[0]
    assert clf.classify_vectors(v) == ["fruit"]
    assert clf.scores(v).shape == (1, 2)
    assert clf.classify_vectors(np.zeros((0, emb.dim), np.float32)) == []
    assert clf.classify([]) == []


@pytest.mark.parametrize("method", ["nearest", "knn", "prototype"])
def test_every_method_gets_clear_cases(emb, method):
    clf = CategoryClassifier(emb, SEEDS, method=method, k=2)
    v = emb.embed(["apple banana", "engine wheel"]).vectors
    assert clf.classify_vectors(v) == ["fruit", "car"]
    if method == "nearest":  # an exact seed scores 1
        np.testing.assert_allclose(clf.scores(v).max(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("method", ["knn", "prototype"])
def test_fallback_below_min_score(emb, method):
    clf = CategoryClassifier(emb, SEEDS, method=method, min_score=0.3, fallback="other")
    v = emb.embed(["apple banana", "quantum zebra telescope"]).vectors
    assert clf.classify_vectors(v) == ["fruit", "other"]
    assert "other" not in clf.categories  # the fallback need not be a category
    never = CategoryClassifier(emb, SEEDS)  # min_score None: always a real category
    assert never.classify_vectors(v)[1] in SEEDS


def test_refine_moves_prototypes_and_changes_a_decision(emb):
    clf = CategoryClassifier(emb, SEEDS, method="prototype")
    query = emb.embed(["tyre garage"]).vectors
    before = clf.prototypes.copy()
    clf.refine(["tyre garage mechanic", "garage tyre"], ["car", "car"])
    assert clf.seed_counts() == {"fruit": 3, "car": 5}
    np.testing.assert_allclose(clf.prototypes[0], before[0])  # other categories untouched
    assert not np.allclose(clf.prototypes[1], before[1])
    assert clf.classify_vectors(query) == ["car"]
    clf.refine([], [])  # nothing to add is fine
    assert clf.seed_counts()["car"] == 5


def test_refine_vectors_takes_precomputed_vectors(emb):
    clf = CategoryClassifier(emb, SEEDS)  # knn: the new example is itself a seed
    clf.refine_vectors(emb.embed(["plum"]).vectors, ["fruit"])
    assert clf.seed_counts()["fruit"] == 4
    assert clf.classify(["plum"]) == ["fruit"]


def test_default_seeds_have_the_documented_categories(emb):
    assert set(DEFAULT_SEEDS) == {"code", "small_talk", "stable_fact", "time_sensitive", "personal", "other"}
    for spec in DEFAULT_SEEDS.values():
        assert spec["description"] and 10 <= len(spec["examples"]) <= 20
    clf = CategoryClassifier(emb)  # DEFAULT_SEEDS by default; description + examples are seeds
    assert clf.method == "knn" and clf.k == 3
    assert clf.categories == tuple(DEFAULT_SEEDS)
    assert clf.seed_counts()["code"] == 1 + len(DEFAULT_SEEDS["code"]["examples"])
    assert seed_texts({"a": "single text"}) == {"a": ["single text"]}


@pytest.mark.parametrize(
    "seeds",
    [{}, {"a": []}, {"a": [""]}, {"a": ["ok"], "b": ["  "]}, {"": ["x"]}, {"a": {"examples": []}},
     {"a": {"desc": "typo"}}, {"a": [1]}, ["not", "a", "mapping"], {"a": 5}],
)  # fmt: skip
def test_bad_seeds_are_config_errors(emb, seeds):
    with pytest.raises(ConfigError):
        CategoryClassifier(emb, seeds)


@pytest.mark.parametrize(
    "kwargs",
    [{"method": "svm"}, {"k": 0}, {"k": True}, {"min_score": 2.0}, {"min_score": float("nan")},
     {"fallback": ""}],
)  # fmt: skip
def test_bad_options_are_config_errors(emb, kwargs):
    with pytest.raises(ConfigError):
        CategoryClassifier(emb, SEEDS, **kwargs)


def test_bad_refine_input(emb, clf):
    with pytest.raises(InvalidInputError, match="unknown categories"):
        clf.refine(["apple"], ["vegetable"])
    with pytest.raises(InvalidInputError, match="labels"):
        clf.refine(["apple", "pear"], ["fruit"])
    with pytest.raises(InvalidInputError):
        clf.refine(["   "], ["fruit"])
    with pytest.raises(InvalidInputError):
        clf.refine("apple", "fruit")
    with pytest.raises(InvalidInputError, match="labels"):
        clf.refine_vectors(emb.embed(["a", "b"]).vectors, ["fruit"])
    assert clf.seed_counts() == {"fruit": 3, "car": 3}  # a refused call changes nothing


def test_bad_query_vectors(emb, clf):
    with pytest.raises(InvalidInputError, match="shape"):
        clf.classify_vectors(np.ones((2, emb.dim + 1), np.float32))
    with pytest.raises(InvalidInputError, match="NaN"):
        clf.scores(np.full((1, emb.dim), np.nan, np.float32))
    with pytest.raises(InvalidInputError, match="NaN"):
        clf.scores(np.r_[np.ones(emb.dim - 1), np.inf].astype(np.float32))
    with np.errstate(over="ignore"):  # finite values whose squares overflow are still finite input
        assert clf.scores(np.full(emb.dim, 1e20, np.float32)).shape == (1, len(clf.categories))
    with pytest.raises(InvalidInputError):
        clf.classify_vectors(np.ones((2, 3, emb.dim)))
    with pytest.raises(InvalidInputError):
        clf.classify("apple")
    assert issubclass(InvalidInputError, ValueError) and issubclass(ConfigError, ValueError)


def test_knn_score_is_mean_of_top_k_seed_similarities(emb):
    seeds = {"fruit": SEEDS["fruit"], "car": ["engine wheel"]}  # "car" has fewer seeds than k
    clf = CategoryClassifier(emb, seeds, method="knn", k=2)
    v = emb.embed(["apple wheel", "banana"]).vectors
    fruit = np.sort(v @ emb.embed(seeds["fruit"]).vectors.T, axis=1)[:, -2:].mean(axis=1)
    car = (v @ emb.embed(seeds["car"]).vectors.T)[:, 0]
    np.testing.assert_allclose(clf.scores(v), np.stack([fruit, car], axis=1), atol=1e-6)
    nearest = CategoryClassifier(emb, seeds, method="nearest")
    fruit_max = (v @ emb.embed(seeds["fruit"]).vectors.T).max(axis=1)
    np.testing.assert_allclose(nearest.scores(v), np.stack([fruit_max, car], axis=1), atol=1e-6)
