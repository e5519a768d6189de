import pytest

from edgecache import CacheConfig, Reason
from edgecache.guards import veto


@pytest.mark.parametrize(
    ("query", "cached", "reason"),
    [
        ("How do I disable 2FA?", "How do I enable 2FA?", "polarity"),
        ("Is the shop closed on Sunday?", "Is the shop open on Sunday?", "polarity"),
        ("What is the slowest land animal?", "What is the fastest land animal?", "polarity"),
        ("Why doesn't my laptop charge?", "Why does my laptop charge?", "negation"),
        ("Is Spotify not available in India?", "Is Spotify available in India?", "negation"),
        ("Can I pay in USD at the airport?", "Can I pay in EUR at the airport?", "entities"),
        ("Who won the World Cup in 2018?", "Who won the World Cup in 2014?", "numbers"),
        ("How many calories are in two eggs?", "How many calories are in 5 eggs?", "numbers"),
        ("How to learn Java quickly?", "How to learn Python quickly?", "entities"),
        ("What is the capital of Austria?", "What is the capital of Australia?", "entities"),
        ("Flights from Chicago to Boston", "Flights from Boston to Chicago", "order"),
    ],
)
def test_minimal_pairs_are_vetoed(query, cached, reason):
    assert veto(query, cached) == reason


@pytest.mark.parametrize(
    ("query", "cached"),
    [
        ("How can I turn on 2FA for my account?", "How do I enable two-factor authentication?"),
        ("Which country won the 2014 World Cup?", "Who won the World Cup in 2014?"),
        ("Why won't my phone connect to WiFi?", "Why isn't my phone connecting to WiFi?"),
        ("Is Spotify available in India or not?", "Is Spotify available in India?"),  # "or not": no negation
        ("Why did the USA nuke Japan?", "Why did the US nuke Japan?"),  # abbreviation
        ("Where can I find painters in Brisbane?", "Where can I find a Painter in Brisbane?"),
        ("What are your 3 favorite movies?", "What are your favorite movies?"),  # one side has no number
        ("Why doesn\u2019t PMMA dissolve in water?", "Why does not PMMA dissolve in water?"),
        # A number added, not changed; a name added, not replaced; a typo; "U.S."; a possessive.
        ("Sum of the first 20 natural numbers (1 to 20)?", "Sum of the first 20 natural numbers?"),
        ("Will the Browns go 0-16 in the 2016 NFL season?", "Will the Cleveland Browns go 0-16 in 2016?"),
        ("How do I upload my profile picture on Qoura?", "How do I upload my profile picture on Quora?"),
        ("Who are you voting for U.S. President?", "Who are you voting for US President?"),
        # One currency by its sign and its code; a negation only in an appended clause.
        ("What business can I start with Rs. 1 lakh?", "What business can I start with INR 1 lakh?"),
        ("How do I change my country? If I can't, what then?", "How do I change my country?"),
        ("What is Bernoullis equation?", "What is Bernoulli's equation?"),
        # Reordered adjectives, and a negated side that adds a condition.
        ("How can I get rid of little black bugs?", "How can I get rid of black little bugs?"),
        ("How do I contact Tim Cook that's not by email?", "How do I contact Tim Cook?"),
    ],
)
def test_paraphrases_pass(query, cached):
    assert veto(query, cached) is None


def test_guard_runs_inside_the_one_decision(make_cache):
    cache = make_cache(threshold=0.7)  # the hashing test embedder puts these at cosine 0.875
    cache.insert("how do I enable 2fa on my account", "Settings > Security > Enable")
    got = cache.lookup("how do I disable 2fa on my account")
    assert not got.hit and got.reason == Reason.GUARDED
    unguarded = make_cache(threshold=0.7, guards=False)
    unguarded.insert("how do I enable 2fa on my account", "x")
    assert unguarded.lookup("how do I disable 2fa on my account").hit  # the false hit guards prevent


def test_guards_flag_is_validated():
    with pytest.raises(ValueError):
        CacheConfig(guards="yes")


@pytest.mark.parametrize(
    ("query", "cached", "kind"),
    [
        ("What is 10 times 11?", "What is 11 times 11?", "numbers"),  # changed where another repeats
        ("What is the boiling point of Methanol?", "What is the boiling point of Ethanol?", "entities"),
        ("What is the capital of Austria?", "What is the capital of Australia?", "entities"),
        ("Convert Celsius to Fahrenheit", "Convert Fahrenheit to Celsius", "order"),
    ],
)
def test_substitutions_still_vetoed(query, cached, kind):
    assert veto(query, cached) == kind


def test_guards_are_read_only_at_or_above_the_threshold(make_cache, monkeypatch):
    # A lookup that no threshold can serve must not pay for the guards (0.6 ms per lookup
    # when they ran on every neighbour).
    import edgecache.cache

    calls = []

    def counting_veto(query, cached):
        calls.append(cached)
        return veto(query, cached)

    monkeypatch.setattr(edgecache.cache, "veto", counting_veto)
    cache = make_cache(threshold=0.7)
    cache.insert("how do I enable 2fa on my account", "x")
    cache.insert("what is the capital of france", "Paris")
    assert cache.lookup("how do I disable 2fa on my account").reason == Reason.GUARDED
    assert calls == ["how do I enable 2fa on my account"]
    assert not cache.lookup("recipe for banana bread").hit
    assert len(calls) == 1
