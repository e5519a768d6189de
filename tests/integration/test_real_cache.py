import pytest

from edgecache import CacheConfig, LocalFolderStore, Reason, SemanticCache

pytestmark = pytest.mark.integration


def test_follow_up_hits_only_under_its_own_first_turn(real_embedder):
    cache = SemanticCache("alice", embedder=real_embedder)
    eid = cache.insert("What is its population?", "About 68 million.", context=["Tell me about France"])
    japan = cache.lookup("What is its population?", context=["Tell me about Japan"])
    assert not japan.hit and japan.reason == Reason.CONTEXT_MISMATCH
    france = cache.lookup("What is the population?", context=["Tell me about France."])
    assert france.hit and france.entry_id == eid
    assert cache.lookup("What is its population?").reason == Reason.CONTEXT_SHAPE


def test_another_question_on_the_same_topic_misses(real_embedder):
    cache = SemanticCache("alice", embedder=real_embedder)
    eid = cache.insert("When was it built?", "1887-1889.", context=["Tell me about the Eiffel Tower"])
    other = cache.lookup("Who designed it?", context=["Tell me about the Eiffel Tower"])
    assert not other.hit and other.reason == Reason.BELOW_THRESHOLD
    same = cache.lookup("When was it constructed?", context=["Give me some facts about the Eiffel Tower."])
    assert same.hit and same.entry_id == eid


def test_paraphrase_hits_and_unrelated_misses(real_embedder):
    cache = SemanticCache("alice", embedder=real_embedder)
    eid = cache.insert("How can I lose weight quickly?", "Eat less, move more.")
    cache.insert("What is the best programming language to learn first?", "Python.")
    assert cache.lookup("What is the fastest way to lose weight?").entry_id == eid
    assert not cache.lookup("Who won the 2010 football world cup?").hit


def test_snapshot_survives_a_new_process_config(tmp_path, real_embedder):
    store = LocalFolderStore(tmp_path)
    cache = SemanticCache("carol", store=store, embedder=real_embedder)
    cache.insert("How do I renew my passport?", "Fill form DS-82.")
    cache.save()
    again = SemanticCache("carol", store=store, embedder=real_embedder, config=CacheConfig())
    assert again.lookup("how do i renew my passport").response == "Fill form DS-82."


def test_enable_never_hits_disable(real_embedder):
    cache = SemanticCache("alice", embedder=real_embedder)
    cache.insert("How do I enable 2FA?", "Settings > Security > Enable 2FA")
    got = cache.lookup("How do I disable 2FA?")
    assert not got.hit and got.reason in (Reason.GUARDED, Reason.BELOW_THRESHOLD)
    assert cache.lookup("How can I turn on 2FA?").hit


def test_text_the_model_cannot_see_never_stands_in_for_other_text(real_embedder):
    # Every emoji, a word in a script the vocabulary lacks, or a 160-character blob is the one
    # [UNK] token: without the "unseen" guard these pairs hit each other at similarity 1.0.
    cache = SemanticCache("alice", embedder=real_embedder)
    pizza = cache.insert("What does the 🍕 emoji mean?", "A slice of pizza.")
    blob = cache.insert("Decode this base64 string: " + "QUJD" * 40, "ABC...")
    for other in ("What does the 🚀 emoji mean?", "Decode this base64 string: " + "WFla" * 40):
        got = cache.lookup(other)
        assert not got.hit and got.reason == Reason.GUARDED and got.similarity > 0.99
    assert cache.lookup("what does the 🍕 emoji mean").entry_id == pizza
    assert cache.lookup("Decode this base64 string: " + "QUJD" * 40).entry_id == blob
    assert real_embedder.unseen(["ราคาเท่าไหร่ ok", "plain words"]) == [("ราคาเท่าไหร",), ()]


def test_unseen_spans_come_with_the_encoding(real_embedder, monkeypatch):
    texts = ["what does the 🦩 emoji mean", "plain words", "x" * 150 + " and 🍕"]
    encoded = real_embedder.encoder.encode_detailed(texts)
    assert encoded.unseen == real_embedder.encoder.unseen(texts)
    assert encoded.unseen == [("🦩",), (), ("x" * 150, "🍕")]
    # A text embedded moments ago (a lookup's query) is not tokenized a second time.
    real_embedder.embed(texts[:1])

    def tokenized(missing):
        assert missing == ["never embedded 🐙"]
        return [("🐙",)]

    monkeypatch.setattr(real_embedder.encoder, "unseen", tokenized)
    assert real_embedder.unseen([texts[0], "never embedded 🐙"]) == [("🦩",), ("🐙",)]


def test_truncation_is_reported_for_what_the_encoder_reads(real_embedder):
    cache = SemanticCache("alice", embedder=real_embedder)
    # Under the character clip, over the encoder's 256 word pieces.
    long = " ".join(f"word{i}" for i in range(400))
    assert cache.insert_detailed(long, "r").truncated
    assert cache.insert_detailed("what is it?", "r", context=[long]).truncated
    assert cache.lookup("what is it?", context=[long]).truncated
    # A long turn older than the chain keeps (context_turns = 2) is never read.
    assert not cache.insert_detailed("and then?", "r", context=[long, "hi", "hello"]).truncated
    assert not cache.lookup("what is it?", context=["x " * 40_000, "hi", "hello"]).truncated


def test_a_long_earlier_turn_never_hides_the_latest_one(real_embedder):
    # The encoder reads 256 word pieces from a text's start: with the chain read whole, a
    # pasted report filled them and "Tell me about Germany" got France's answer at context 1.0.
    cache = SemanticCache("alice", embedder=real_embedder)
    report = " ".join(
        f"Paragraph {i} covers trade balances and demographic trends across Europe." for i in range(40)
    )
    eid = cache.insert(
        "What is its population?", "About 68 million.", context=[report, "Tell me about France"]
    )
    assert cache.get(eid).context == "Tell me about France"
    germany = cache.lookup("What is its population?", context=[report, "Tell me about Germany"])
    assert not germany.hit and germany.reason == Reason.CONTEXT_MISMATCH and germany.truncated
    france = cache.lookup("What is the population?", context=[report, "Tell me about France."])
    assert france.hit and france.entry_id == eid and france.truncated
    # A chain that fits is read whole, as before.
    both = cache.insert_detailed(
        "And its capital?", "Paris.", context=["Tell me about France", "Its population?"]
    )
    assert not both.truncated
    assert cache.get(both.entry_id).context == "Tell me about France\nIts population?"
