import pytest

from edgecache import InvalidInputError
from edgecache.text import MAX_ENCODED_CHARS, MAX_STORED_BYTES, as_text, clean_context, clean_query


@pytest.mark.parametrize("bad", ["", "   \n\t ", None, 42, ["a"], b"\xff\xfe"])
def test_bad_queries_raise(bad):
    with pytest.raises(InvalidInputError):
        clean_query(bad)


def test_utf8_bytes_are_accepted_and_normalised():
    c = clean_query("  How   do I\nenable \uff12FA? ".encode())  # fullwidth digit two
    assert c.normalized == "How do I enable 2FA?"
    assert not c.clipped


def test_lone_surrogate_is_refused():
    with pytest.raises(InvalidInputError, match="UTF-8"):
        as_text("bad \udc80 text", "query")


def test_huge_query_is_clipped_and_flagged():
    c = clean_query("word " * 300_000)  # 1.5 MB
    assert c.clipped and len(c.normalized) == MAX_ENCODED_CHARS


def test_oversized_payload_is_refused():
    with pytest.raises(InvalidInputError, match="larger"):
        as_text("x" * (MAX_STORED_BYTES + 1), "response")


def test_context_shapes():
    assert clean_context(None) == []
    assert [c.normalized for c in clean_context(["a", "b"])] == ["a", "b"]
    with pytest.raises(InvalidInputError, match="list"):
        clean_context("Tell me about France")
    with pytest.raises(InvalidInputError, match=r"context\[1\]"):
        clean_context(["fine", ""])


@pytest.mark.parametrize(
    "invisible",
    [
        *(
            "\u200b",
            "\x00",
            " \u200b\ufeff\x07 ",
            "\u2060",
            "\u200b \u200b",
            "\x00 \x00",
            "\ufeff \u200b\t\u200b",
        ),
        *("\u3164", "\u115f \u1160", "\uffa0", "\u2800\u200b"),  # printed blank: Hangul fillers, braille
    ],
)
def test_a_query_of_invisible_characters_is_empty(invisible):
    with pytest.raises(InvalidInputError, match="empty"):
        clean_query(invisible)
    assert clean_query("hi\u200b").normalized == "hi\u200b"
