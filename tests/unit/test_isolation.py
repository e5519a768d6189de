"""Property tests: over random users and queries, no user ever reads, hits, or overwrites
another user's entries, through the Lambda handler, the proxy namespaces and the stores."""

import json
import random

from edgecache import MemoryStore, SemanticCache
from edgecache.proxy import namespace
from edgecache.registry import CacheRegistry
from edgecache.server import Service
from edgecache.stores import user_key
from edgecache_functions.handler import make_handler
from tests.unit.test_lambda_handler import event

ALPHABET = "abcXYZ019:#/._- éü中"


def random_users(rng: random.Random, n: int) -> list[str]:
    users = {"a", "a#", "1:a", "jwt:a", "A", "a ", " a"}  # near-collisions on purpose
    while len(users) < n:
        users.add("".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 12))))
    return sorted(u for u in users if u.strip())


def test_handler_never_serves_one_users_entries_to_another(embedder, config):
    rng = random.Random(1234)
    store, bodies = MemoryStore(), MemoryStore()
    handle = make_handler(
        lambda: Service(CacheRegistry(store, config, embedder, bodies=bodies)), log=lambda _: None
    )
    users = random_users(rng, 24)
    topics = [f"topic {i} {rng.choice(['alpha', 'beta', 'gamma'])} question" for i in range(30)]
    owned: dict[str, set[str]] = {u: set() for u in users}
    for _ in range(150):
        user, query = rng.choice(users), rng.choice(topics)
        out = handle(event("/v1/insert", {"query": query, "response": f"{user}|{query}"}, sub=user), None)
        assert out["statusCode"] == 200
        owned[user].add(query)
    for _ in range(300):
        user, query = rng.choice(users), rng.choice(topics)
        out = json.loads(handle(event("/v1/lookup", {"query": query}, sub=user), None)["body"])
        if out["hit"]:
            assert out["response"].split("|", 1)[0] == user  # only ever the asker's own entry
        else:
            assert query not in owned[user]
    # Deleting or clearing as one user leaves every other user's entries in place.
    victim = rng.choice([u for u in users if owned[u]])
    for other in users:
        if other != victim:
            handle(event("/v1/clear", {}, sub=other), None)
    survivor = json.loads(
        handle(event("/v1/lookup", {"query": next(iter(owned[victim]))}, sub=victim), None)["body"]
    )
    assert survivor["hit"] and survivor["response"].startswith(f"{victim}|")


def test_keys_never_collide_across_users_or_namespaces():
    rng = random.Random(99)
    users = random_users(rng, 400)
    assert len({user_key(u) for u in users}) == len(users)
    spaces = {namespace(u, m, s) for u in users for m in ("m1", "m2") for s in ("", "sys")}
    assert len(spaces) == len(users) * 4
    # A namespace of one user is never another user's plain id either.
    assert not spaces & set(users)


def test_one_users_cache_never_overwrites_anothers_snapshot(embedder, config):
    store = MemoryStore()
    rng = random.Random(7)
    users = random_users(rng, 12)
    for user in users:
        cache = SemanticCache(user, store=store, config=config, embedder=embedder)
        cache.insert(f"private question of {user}", user)
        cache.save()
    assert len(store._data) == len(users)
    for user in users:
        cache = SemanticCache(user, store=store, config=config, embedder=embedder)
        assert len(cache) == 1 and cache.lookup(f"private question of {user}").response == user
