"""KV-cache presses on a tiny random Llama (4 layers, 6 query heads over 2 KV heads)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("kvpress")

from kvpress import KVPressTextGenerationPipeline  # noqa: E402
from kvpress.utils import compute_n_kept  # noqa: E402
from transformers import DynamicCache  # noqa: E402

from edgecache.errors import ConfigError, EdgecacheError  # noqa: E402
from edgecache.llm.model import ModelNotAvailableError, load_model, resolve_device  # noqa: E402
from edgecache.llm.presses import (  # noqa: E402
    PRESSES,
    CompressKVPress,
    SentenceKVPress,
    TaskKVPress,
    WindowKVPress,
    allocate_budgets,
    classify_task,
    kv_bytes,
    kv_entries,
    make_press,
    sentence_spans,
)
from edgecache.llm.testing import tiny_model  # noqa: E402

BUDGETS = (0.5, 0.25, 0.1)
CONTEXT = (
    "The museum opened a new wing last spring. Visitors walk through quiet galleries for hours! "
    "A small cafe near the entrance serves coffee. The secret number is 7421. "
    "Is the bridge over the river old? The council approved a plan to repair it.\n"
) * 3


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # On a busy 2-core machine torch's second thread spin-waits: one thread is ~20x faster
    # for a model this small.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lm():
    return tiny_model(num_hidden_layers=4)


@pytest.fixture(scope="module")
def ids(lm):
    return lm.tokenizer(CONTEXT, return_tensors="pt").input_ids


def prefill(lm, ids, press):
    cache = DynamicCache()
    with torch.no_grad():
        if press is None:
            lm.model.model(input_ids=ids, past_key_values=cache)
        else:
            with press(lm.model):
                lm.model.model(input_ids=ids, past_key_values=cache)
    return cache


def kept(k_len: int, budget: float) -> int:
    # kvpress's own rounding of compression_ratio = 1 - budget, shared by every press.
    return compute_n_kept(k_len, 1.0 - budget)


# --------------------------------------------------------------------------- registry


def test_registry_names_and_full_means_no_press():
    for name in ("full", "snapkv", "streamingllm", "knorm", "pyramidkv", "expected_attention"):
        assert name in PRESSES
    for name in ("windowkv", "compresskv", "taskkv", "sentencekv"):
        assert PRESSES[name].source == "edgecache"
    assert make_press("full", 0.1) is None
    assert make_press("SnapKV", 0.25).compression_ratio == pytest.approx(0.75)


@pytest.mark.parametrize("budget", [0, -0.1, 1.5, float("nan"), float("inf"), True, "0.5", None])
def test_bad_budgets_are_config_errors(budget):
    with pytest.raises(ConfigError, match=r"budget"):
        make_press("snapkv", budget)


def test_unknown_press_lists_the_valid_names():
    with pytest.raises(ConfigError) as info:
        make_press("magickv", 0.5)
    for name in PRESSES:
        assert name in str(info.value)
    assert isinstance(info.value, EdgecacheError)


def test_unknown_options_and_sentencekv_without_tokenizer_are_rejected(lm):
    with pytest.raises(ConfigError, match="window_size"):
        make_press("snapkv", 0.5, windw_size=8)
    with pytest.raises(ConfigError, match="tokenizer"):
        make_press("sentencekv", 0.5)
    with pytest.raises(ConfigError, match="task"):
        make_press("windowkv", 0.5, task="poetry")
    with pytest.raises(ConfigError, match="options"):
        make_press("full", 0.5, window_size=8)
    assert isinstance(make_press("sentencekv", 0.5, tokenizer=lm.tokenizer), SentenceKVPress)


def test_budget_one_keeps_everything(lm, ids):
    for name in ("snapkv", "windowkv", "compresskv", "taskkv"):
        cache = prefill(lm, ids, make_press(name, 1.0, tokenizer=lm.tokenizer))
        assert (kv_entries(lm.model, cache) == ids.shape[1]).all(), name


# --------------------------------------------------------------------------- budgets


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("name", ["snapkv", "streamingllm", "knorm", "expected_attention", "sentencekv"])
def test_uniform_presses_keep_the_budget_in_every_layer_and_head(lm, ids, name, budget):
    options = {"window_size": 16} if name == "snapkv" else {}
    cache = prefill(lm, ids, make_press(name, budget, tokenizer=lm.tokenizer, **options))
    entries = kv_entries(lm.model, cache)
    assert entries.shape == (4, 2)
    assert (entries == kept(ids.shape[1], budget)).all()


@pytest.mark.parametrize("budget", BUDGETS)
def test_windowkv_keeps_whole_windows_shared_within_layer_groups(lm, ids, budget):
    press = make_press("windowkv", budget, group_size=2, review_window_size=8)
    k_len = ids.shape[1]
    cache = prefill(lm, ids, press)
    entries = kv_entries(lm.model, cache)[:, 0].tolist()
    budgets = press.layer_budgets(4, k_len)
    # Groups share indices, so they share counts; earlier groups get at least as much.
    assert entries[0] == entries[1] and entries[2] == entries[3]
    assert entries[0] >= entries[2]
    assert all(e <= b for e, b in zip(entries, budgets, strict=True))
    # Only whole review windows are kept: less than one window of each budget goes unused.
    assert all(b - e < 8 for e, b in zip(entries, budgets, strict=True))
    assert sum(entries) <= 4 * kept(k_len, budget) and sum(entries) >= 4 * (kept(k_len, budget) - 8) - 4
    idx = press.kept_indices
    assert torch.equal(idx[0], idx[1]) and torch.equal(idx[2], idx[3])
    suffix = press.suffix
    for layer in range(4):
        positions = set(idx[layer][0, 0].tolist())
        review = k_len - min(suffix, budgets[layer], k_len - 1)
        assert set(range(review, k_len)) <= positions  # the observation window
        for p in positions:
            if p < review:
                window = range(p // 8 * 8, min(p // 8 * 8 + 8, review))
                assert set(window) <= positions


def test_windowkv_task_changes_the_scoring_rule(lm, ids):
    qa = make_press("windowkv", 0.25, group_size=2, task="qa")
    agg = make_press("windowkv", 0.25, group_size=2, task="aggregation")
    prefill(lm, ids, qa)
    prefill(lm, ids, agg)
    assert (qa.suffix, agg.suffix) == (32, 16)
    assert not torch.equal(qa.kept_indices[0], agg.kept_indices[0])
    assert classify_task("Summarize the meeting notes") == "aggregation"
    assert classify_task("What is the secret number?") == "qa"


@pytest.mark.parametrize("budget", BUDGETS)
def test_compresskv_allocates_layer_budgets_from_eviction_errors(lm, ids, budget):
    press = make_press("compresskv", budget)
    k_len = ids.shape[1]
    cache = prefill(lm, ids, press)
    entries = kv_entries(lm.model, cache)
    mean = kept(k_len, budget)
    # The total is the uniform budget; each layer stays within [0.2, 3] x the mean.
    assert int(entries[:, 0].sum()) == 4 * mean
    assert (entries[:, 0] >= int(mean * 0.2)).all() and (entries[:, 0] <= min(k_len, 3 * mean)).all()
    assert (entries[:, 0] == entries[:, 1]).all()  # all KV heads follow the retrieval heads
    errors = [press.last_layer_errors[i] for i in range(4)]
    assert all(e > 0 for e in errors)
    worst, best = errors.index(max(errors)), errors.index(min(errors))
    assert entries[worst, 0] >= entries[best, 0]
    for layer in range(4):
        assert len(press.last_retrieval_heads[layer]) == 2
        assert set(range(k_len - 8, k_len)) <= set(press.kept_indices[layer][0, 0].tolist())


def test_compresskv_calibrated_errors_fix_the_budgets(lm, ids):
    errors = CompressKVPress.calibrate(lm.model, [ids, ids[:, :120]], budget=0.25)
    assert len(errors) == 4 and all(e > 0 for e in errors)
    press = make_press("compresskv", 0.25, layer_errors=errors)
    cache = prefill(lm, ids, press)
    entries = kv_entries(lm.model, cache)[:, 0]
    expected = press._layer_budgets(errors, ids.shape[1])
    assert entries.tolist() == expected and sum(expected) == 4 * kept(ids.shape[1], 0.25)
    with pytest.raises(ConfigError, match="layers"):
        prefill(lm, ids, make_press("compresskv", 0.25, layer_errors=errors[:3]))


@pytest.mark.parametrize("budget", BUDGETS)
def test_taskkv_heterogeneous_head_keeps_more_others_keep_sinks_and_recent(lm, ids, budget):
    press = make_press("taskkv", budget, recent_size=16)
    k_len = ids.shape[1]
    cache = prefill(lm, ids, press)
    entries = kv_entries(lm.model, cache)
    mean = kept(k_len, budget)
    assert (entries.sum(dim=1) == 2 * mean).all()  # attended entries: exactly the budget
    for layer in range(4):
        far = int(press.last_distances[layer][0].argmax())
        near = 1 - far
        assert entries[layer, far] > entries[layer, near] >= mean // 2
        near_positions = set(press.kept_indices[layer][0, near].tolist()) - {-1}
        assert len(near_positions) == entries[layer, near]
        assert set(range(4)) <= near_positions  # attention sinks
        recent = min(16, (int(entries[layer, near]) - 4) // 2)
        assert set(range(k_len - recent, k_len)) <= near_positions
    # The cache holds the largest share for every head; the surplus is masked.
    assert kv_bytes(lm.model, cache) > kv_bytes(lm.model, cache, attended=True)


def test_taskkv_masked_entries_do_not_reach_the_output(lm, ids):
    press = make_press("taskkv", 0.25)
    cache = prefill(lm, ids, press)
    question = lm.tokenizer(" What is the secret number?", return_tensors="pt").input_ids
    positions = torch.arange(ids.shape[1], ids.shape[1] + question.shape[1])[None]

    def logits_after(c):
        snapshot = DynamicCache()
        for i, layer in enumerate(c.layers):
            snapshot.update(layer.keys.clone(), layer.values.clone(), i)
        with torch.no_grad():
            return lm.model(input_ids=question, past_key_values=snapshot, position_ids=positions).logits[
                0, -1
            ]

    reference = logits_after(cache)
    for layer, masked in press.masks.items():
        assert masked is not None
        b, h, p = masked
        cache.layers[layer].values[b, h, p] += 100.0
    assert torch.allclose(logits_after(cache), reference, atol=1e-4)
    # Without the masks the same perturbation changes the output, so the check has teeth.
    for layer in lm.model.model.layers:
        layer.self_attn.edgecache_masked_keys = None
    assert not torch.allclose(logits_after(cache), reference, atol=1e-2)
    press.restore_masks(lm.model)
    assert torch.allclose(logits_after(cache), reference, atol=1e-4)


def test_taskkv_refuses_eager_attention(ids):
    eager = tiny_model(num_hidden_layers=2, attn_implementation="eager")
    with pytest.raises(ConfigError, match="sdpa"):
        prefill(eager, ids, make_press("taskkv", 0.5))


@pytest.mark.parametrize("budget", BUDGETS)
def test_sentencekv_keeps_whole_sentences_and_fills_less_than_one(lm, ids, budget):
    press = make_press("sentencekv", budget, tokenizer=lm.tokenizer, window_size=16)
    k_len = ids.shape[1]
    prefill(lm, ids, press)
    spans = press.last_spans[0]
    assert len(spans) >= 15  # the context has 18 sentences
    n = kept(k_len, budget)
    window = min(16, k_len - 1, n)
    for layer in range(4):
        for head in range(2):
            positions = set(press.kept_indices[layer][0, head].tolist())
            assert len(positions) == n
            assert set(range(min(4, n - window))) | set(range(k_len - window, k_len)) <= positions
            whole = [s for s in spans if set(range(*s)) <= positions]
            covered = set(range(min(4, n - window))) | set(range(k_len - window, k_len))
            for s, e in whole:
                covered |= set(range(s, e))
            loose = positions - covered
            missing = [e - s for s, e in spans if not set(range(s, e)) <= positions]
            assert whole, "at least one whole sentence fits"
            assert not missing or len(loose) < min(missing)


def test_sentencekv_offload_keeps_part_of_the_budget_and_offloads_the_full_prefill(lm, ids):
    press = make_press("sentencekv_offload", 0.25, tokenizer=lm.tokenizer, window_size=16)
    k_len = ids.shape[1]
    full = prefill(lm, ids, None)
    cache = prefill(lm, ids, press)
    n = kept(k_len, 0.25)
    room = int(n * 0.5)
    store = press.store
    assert store is not None and store.retrieve_tokens == room
    for layer in range(4):
        assert cache.layers[layer].keys.shape[2] == n - room == store.resident_count(layer)
        stored = store.layers[layer]
        assert torch.allclose(stored.keys, full.layers[layer].keys)
        assert torch.allclose(stored.values, full.layers[layer].values)
        resident = stored.resident[0].nonzero()[:, 1].reshape(2, -1)
        assert torch.equal(resident, press.kept_indices[layer][0])
    assert store.nbytes == sum(kv_bytes_of(full.layers[i]) for i in range(4))
    # A second context replaces the store; one too short to compress leaves none behind.
    prefill(lm, ids[:, :1], press)
    assert press.store is None


def kv_bytes_of(layer) -> int:
    return sum(t.numel() * t.element_size() for t in (layer.keys, layer.values))


def _ask(lm, cache, question, start):
    with torch.no_grad():
        return lm.model(
            input_ids=question,
            past_key_values=cache,
            position_ids=torch.arange(start, start + question.shape[1])[None],
        ).logits[0, -1]


def test_offloaded_sentences_come_back_per_question_and_all_of_them_equal_the_full_cache(lm, ids):
    question = lm.tokenizer(" What is the secret number?", return_tensors="pt").input_ids
    q_len, k_len = question.shape[1], ids.shape[1]
    press = make_press("sentencekv_offload", 0.25, tokenizer=lm.tokenizer, window_size=16)
    cache = prefill(lm, ids, press)
    resident = cache.layers[0].keys.shape[2]
    room = press.store.retrieve_tokens
    with press.retrieving(lm.model):
        for _ in range(2):  # each question, after the last answer is cropped away, retrieves again
            press.store.last_retrieved.clear()
            _ask(lm, cache, question, k_len)
            for layer in range(4):
                assert cache.layers[layer].keys.shape[2] == resident + room + q_len
                chosen = press.store.last_retrieved[layer][0]
                held = press.store.layers[layer].resident[0]
                assert chosen.shape == (2, room)
                assert not any(held[h, chosen[h]].any() for h in range(2))  # nothing twice
            cache.crop(resident)
    # Retrieval re-reads nothing once the question is in the cache: decoding steps add one each.
    with press.retrieving(lm.model):
        _ask(lm, cache, question, k_len)
        _ask(lm, cache, question[:, :1], k_len + q_len)
    assert cache.layers[0].keys.shape[2] == resident + room + q_len + 1
    # With room for everything evicted, the question reads the full cache's entries (in another
    # order): the same logits as with no compression at all.
    full_logits = _ask(lm, prefill(lm, ids, None), question, k_len)
    cache = prefill(lm, ids, press)
    press.store.retrieve_tokens = k_len
    with press.retrieving(lm.model):
        everything = _ask(lm, cache, question, k_len)
    assert cache.layers[0].keys.shape[2] == k_len + q_len
    assert torch.allclose(everything, full_logits, atol=1e-4)
    # ... and without the hooks the compressed cache answers differently (the test has teeth).
    cache = prefill(lm, ids, press)
    assert not torch.allclose(_ask(lm, cache, question, k_len), full_logits, atol=1e-3)


def test_sentencekv_offload_rejects_a_bad_share(lm):
    with pytest.raises(ConfigError, match="retrieval_share"):
        make_press("sentencekv_offload", 0.25, tokenizer=lm.tokenizer, retrieval_share=1.0)


def test_sentence_spans_cut_at_boundaries_and_long_runs():
    assert sentence_spans([1, 2, 9, 3, 9, 4], {9}, max_tokens=10) == [(0, 3), (3, 5), (5, 6)]
    assert sentence_spans(list(range(7)), set(), max_tokens=3) == [(0, 3), (3, 6), (6, 7)]


def test_allocate_budgets_sums_respects_bounds_and_follows_weights():
    budgets = allocate_budgets([1, 2, 7], total=100, low=10, high=60)
    assert sum(budgets) == 100 and min(budgets) >= 10 and max(budgets) <= 60
    assert budgets[0] <= budgets[1] <= budgets[2]
    assert allocate_budgets([0, 0], total=10, low=1, high=9) == [5, 5]
    assert allocate_budgets([1, 100], total=20, low=2, high=12) == [8, 12]


# --------------------------------------------------------------------------- generation


@pytest.mark.parametrize("name", list(PRESSES))
def test_generation_runs_on_every_compressed_cache(lm, name):
    options = {"group_size": 2} if name == "windowkv" else {}
    press = make_press(name, 0.25, tokenizer=lm.tokenizer, **options)
    pipe = KVPressTextGenerationPipeline(model=lm.model, tokenizer=lm.tokenizer)
    out = pipe(CONTEXT, questions=["What is the secret number?", "Is it old?"], press=press, max_new_tokens=4)
    assert len(out["answers"]) == 2 and all(isinstance(a, str) for a in out["answers"])


def test_layers_of_different_lengths_decode_like_one_token_at_a_time(lm, ids):
    press = make_press("compresskv", 0.25)
    cache = prefill(lm, ids, press)
    lengths = {layer.keys.shape[2] for layer in cache.layers}
    assert len(lengths) > 1  # the case transformers' single mask cannot describe
    question = lm.tokenizer(" Is the bridge old?", return_tensors="pt").input_ids
    start = ids.shape[1]

    def copy(c):
        out = DynamicCache()
        for i, layer in enumerate(c.layers):
            out.update(layer.keys.clone(), layer.values.clone(), i)
        return out

    with torch.no_grad():
        together = lm.model(
            input_ids=question,
            past_key_values=copy(cache),
            position_ids=torch.arange(start, start + question.shape[1])[None],
        ).logits[0, -1]
        stepwise_cache = copy(cache)
        for i in range(question.shape[1]):
            last = lm.model(
                input_ids=question[:, i : i + 1],
                past_key_values=stepwise_cache,
                position_ids=torch.tensor([[start + i]]),
            ).logits[0, -1]
    assert torch.allclose(together, last, atol=1e-4)


# --------------------------------------------------------------------------- model loading


def test_load_model_without_a_build_says_how_to_build(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="edgecache llm build"):
        load_model(home=tmp_path)


def test_load_model_rejects_missing_and_non_model_folders(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        load_model(str(tmp_path / "nowhere"))
    with pytest.raises(ModelNotAvailableError, match=r"config\.json"):
        load_model(tmp_path)
    with pytest.raises(ConfigError, match="device"):
        load_model(tmp_path, device="tpu")
    with pytest.raises(ConfigError, match="attn_implementation"):
        load_model(tmp_path, attn_implementation="flash_attention_3")


def test_load_model_reads_any_saved_causal_lm_folder(tmp_path, lm):
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(tmp_path, device="cpu")
    assert loaded.device == "cpu" and loaded.source == str(tmp_path)
    assert loaded.model.config._attn_implementation == "sdpa"
    sample = lm.tokenizer("The secret number", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(loaded.model(sample).logits, lm.model(sample).logits, atol=1e-5)


def test_resolve_device():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ConfigError):
        resolve_device("gpu")


def test_llm_cli_is_registered_and_skips_an_existing_build(tmp_path, capsys):
    from edgecache.cli import build_parser, main

    args = build_parser().parse_args(["llm", "build", "--home", str(tmp_path)])
    assert args.llm_command == "build" and not args.force
    folder = tmp_path / "llm" / "smollm2-135m-instruct" / "abc"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"")
    (folder.parent / "CURRENT").write_text("abc\n")
    assert main(["llm", "build", "--home", str(tmp_path)]) == 0
    assert "already built" in capsys.readouterr().out


def test_math_helpers_are_consistent():
    assert kept(100, 0.5) == 50 and kept(5, 0.1) == 1
    assert math.isclose(make_press("knorm", 0.1).compression_ratio, 0.9)
    for cls in (WindowKVPress, CompressKVPress, TaskKVPress):
        with pytest.raises(ConfigError):
            cls(compression_ratio=1.0)
