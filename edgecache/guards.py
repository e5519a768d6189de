"""False-hit guards: cheap checks that veto a semantic hit when two queries differ in
what matters, even though their embeddings are close.

"enable 2FA" and "disable 2FA" sit at cosine ~0.9 in any sentence encoder; so do
"flights to Paris in 2023" and "... in 2024". Each guard compares one signal of the
two texts (what the encoder cannot see, numbers, negation, opposite words, names, word
order) and names the mismatch; `veto` returns the first one found, or None.
Pure functions over strings, shared by the cache and the evaluation.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

_TOKEN = re.compile(r"[A-Za-z]+(?:'[a-z]+)?|\d+(?:[.,]\d+)*")
_ACRONYM = re.compile(r"\b(?:[A-Z]\.){2,}")  # U.S. -> US, U.K. -> UK
# "rational no. and fractions", "the no. of students": the abbreviation of "number", not a "no".
_NUMBER_ABBREVIATION = re.compile(r"(?<=[A-Za-z] )no\.(?=[ \d])", re.IGNORECASE)
# A negation in brackets qualifies the question ("a larger lens (not wider angle)"); it does not
# turn it around.
_BRACKETED = re.compile(r"\([^()]*\)")
_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
    "twenty": "20", "thirty": "30", "forty": "40", "fifty": "50", "hundred": "100",
    "thousand": "1000", "million": "1000000", "billion": "1000000000",
}  # fmt: skip
# Words after a number that scale it: "13k" is 13,000, "4 lakhs" is 400,000 (Indian English).
_MAGNITUDES = {"k": 1000, "lakh": 100_000, "lakhs": 100_000, "crore": 10**7, "crores": 10**7}
_NEGATIONS = frozenset(
    "not no never none nobody nothing neither nor cannot can't don't doesn't didn't isn't aren't "
    "wasn't weren't won't wouldn't shouldn't couldn't hasn't haven't hadn't without "
    # The same, typed without the apostrophe.
    "cant dont doesnt didnt isnt arent wasnt werent wont wouldnt shouldnt couldnt hasnt havent "
    "hadnt".split()
)
# Each pair: the two sides of one direction or polarity. Each stem also matches its regular
# inflections (`_forms`): "enable" covers enabled/enabling, "fast" covers faster/fastest.
_OPPOSITES = (
    ("enable", "disable"), ("activate", "deactivate"), ("open", "close"), ("lock", "unlock"),
    ("on", "off"), ("add", "remove"), ("install", "uninstall"), ("increase", "decrease"),
    ("buy", "sell"), ("start", "stop"), ("allow", "block"), ("include", "exclude"),
    ("import", "export"), ("upload", "download"), ("before", "after"), ("max", "min"),
    ("more", "less"), ("higher", "lower"), ("best", "worst"), ("cheap", "expensive"),
    ("win", "lose"), ("increase", "reduce"), ("encrypt", "decrypt"), ("follow", "unfollow"),
    ("subscribe", "unsubscribe"), ("connect", "disconnect"), ("mute", "unmute"),
    ("hide", "show"), ("accept", "reject"), ("gain", "lose"), ("male", "female"),
    ("north", "south"), ("east", "west"), ("past", "future"), ("inside", "outside"),
    ("long", "short"), ("hot", "cold"), ("fast", "slow"), ("legal", "illegal"),
    ("possible", "impossible"), ("safe", "unsafe"), ("true", "false"), ("pros", "cons"),
    ("advantages", "disadvantages"), ("positive", "negative"), ("rich", "poor"),
    ("old", "new"), ("first", "last"), ("young", "old"), ("light", "dark"), ("up", "down"),
)  # fmt: skip
# Names of one thing written two ways (a currency's sign and its code): not a substitution.
_ALIASES = {
    "rs": "inr",
    "rupee": "inr",
    "rupees": "inr",
    "dollar": "usd",
    "dollars": "usd",
    "euro": "eur",
    "euros": "eur",
}
# Words that give the words around them roles: "from Boston to Chicago" is not "from
# Chicago to Boston", but "little black bugs" is "black little bugs".
_DIRECTIONAL = frozenset("to from than into onto toward towards".split())
# Small words inside a name that its acronym may spell or skip ("World of Tanks": WoT).
_JOINING = frozenset("of and the for de".split())
# Words that start a sentence or a question and say nothing about its subject.
_COMMON_CAPITALISED = frozenset(
    "i what how why when where which who whom whose is are was were do does did can could should "
    "would will if the a an in on at for to of and or my me it this that there".split()
)


@dataclass(frozen=True)
class Signals:
    # Each guard vetoes only when every reading of the texts shows the difference: a question
    # is read with and without its brackets ("a larger lens (not wider angle)"), and its
    # numbers with and without their magnitudes ("10-12K" is 10k-12k, or 10 and 12,000).
    negated: tuple[bool, bool]  # an odd count of negations: all of them, those outside brackets
    numbers: tuple[tuple[str, ...], tuple[str, ...]]  # in order: scaled ("60k" = 60000), as written
    words: frozenset[str]
    names: frozenset[str]  # capitalised tokens not at the start: names, acronyms
    order: tuple[str, ...]  # content words in order ("from Boston to Chicago")
    tokens: tuple[str, ...] = ()  # every token, lower case, in order
    # Per pair of opposites (index into _OPPOSITES): 1 = left side present, 2 = right, 3 = both.
    polar: tuple[tuple[int, int], ...] = ()
    # The same readings with a lone "I" after a name read as 1 ("World War I"): used only
    # against a text that writes a Roman numeral of two letters or more, or a number between
    # the same two words as the "I" ("World War 2", "Type 2 diabetes"), since elsewhere the
    # "I" is far likelier the pronoun ("In Excel I want ...", "In Excel 365 I want ...").
    numbers_lone_i: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    roman: bool = False  # holds a Roman numeral of two letters or more ("II", "XIV")
    lone_i_slots: frozenset[tuple[str, str]] = frozenset()  # the words around a lone "I" that may be 1
    number_slots: frozenset[tuple[str, str]] = frozenset()  # the words around each number


@lru_cache(maxsize=8192)
def signals(text: str) -> Signals:
    text = _ACRONYM.sub(lambda m: m.group(0).replace(".", ""), text.replace("\u2019", "'"))
    text = _NUMBER_ABBREVIATION.sub("number ", text)
    tokens, lower = _tokens(text)
    opens = _opens_sentence(text)
    # A capital that opens a sentence, or a turn of a conversation, says nothing of a name.
    names = {
        low
        for i, (tok, low) in enumerate(zip(tokens, lower, strict=True))
        if not opens[i] and tok[0].isupper() and low not in _COMMON_CAPITALISED
    }
    polar: dict[int, int] = {}
    for t in lower:
        for pair, side in _POLAR_FORMS.get(t, ()):
            polar[pair] = polar.get(pair, 0) | side
    return Signals(
        negated=(_negations(lower) % 2 == 1, _negations(_tokens(_BRACKETED.sub(" ", text))[1]) % 2 == 1),
        numbers=(_numbers(tokens, lower, True, False), _numbers(tokens, lower, False, False)),
        numbers_lone_i=(_numbers(tokens, lower, True, True), _numbers(tokens, lower, False, True)),
        roman=any(len(t) > 1 and _ROMAN.fullmatch(t) for t in tokens),
        lone_i_slots=frozenset(
            _between(lower, i) for i, t in enumerate(tokens) if t == "I" and _is_roman(tokens, i, True)
        ),
        number_slots=frozenset(
            _between(lower, i)
            for i in range(1, len(tokens))
            if tokens[i][0].isdigit() or lower[i] in _NUMBER_WORDS or _is_roman(tokens, i, False)
        ),
        words=frozenset(lower),
        names=frozenset(names),
        order=tuple(t for t in lower if t not in _COMMON_CAPITALISED),
        tokens=tuple(lower),
        polar=tuple(polar.items()),
    )


def _between(lower: list[str], i: int) -> tuple[str, str]:
    """The words before and after token i ("" past the end)."""
    return lower[i - 1], lower[i + 1] if i + 1 < len(lower) else ""


def _opens_sentence(text: str) -> list[bool]:
    """Per token of `_tokens`: does it open the text, a sentence or a line (a turn)?"""
    out, end = [], 0
    for m in _TOKEN.finditer(text):
        out.append(end == 0 or _SENTENCE_BREAK.search(text, end, m.start()) is not None)
        end = m.end()
    return out


def _tokens(text: str) -> tuple[list[str], list[str]]:
    """The tokens as written and in lower case (a currency's sign and code made one name)."""
    # "Bernoulli's" names what "Bernoullis" and "Bernoulli" name.
    tokens = [t[:-2] if t.endswith("'s") else t for t in _TOKEN.findall(text)]
    return tokens, [_ALIASES.get(t.lower(), t.lower()) for t in tokens]


def _numbers(tokens: list[str], lower: list[str], scaled: bool, lone_i: bool) -> tuple[str, ...]:
    """The numbers in order, as plain decimals (number words as digits), "60k" as 60000 when
    `scaled`."""
    out = []
    for i, (tok, low) in enumerate(zip(tokens, lower, strict=True)):
        if tok.count(".") > 1:  # a version or a phone number: "1.8.0.0"
            out.append(tok)
            continue
        if tok[0].isdigit():
            value = Decimal(tok.replace(",", ""))
        elif low in _NUMBER_WORDS:
            value = Decimal(_NUMBER_WORDS[low])
        elif _is_roman(tokens, i, lone_i):
            value = Decimal(_roman_value(tok))
        else:
            continue
        if scaled and i + 1 < len(lower):
            value *= _MAGNITUDES.get(lower[i + 1], 1)
        out.append(format(value.normalize(), "f"))
    return tuple(out)


# Words that, capitalised, start a sentence before the pronoun "I" ("Can I", "Then I").
_OPEN_A_SENTENCE = frozenset(
    "can could should would will shall may might must do does did am was were have had "
    "what when where why how who which whom whose if then so but and or also now here there "
    "yes no as because since after before while once maybe perhaps today yesterday tomorrow "
    "hi hello hey ok okay sorry please actually well thanks this that".split()
)
_SENTENCE_BREAK = re.compile(r"[.!?\n]")
# Roman numerals up to 39 written with I, V and X: "World War II", "Henry VIII", "Rocky IV".
# Letters such as C, D, L and M would read "CD", "DC" or "MM" as numbers.
_ROMAN = re.compile(r"X{0,3}(?:IX|IV|VI{0,3}|I{0,3})")
_ROMAN_VALUES = {"I": 1, "V": 5, "X": 10}


def _is_roman(tokens: list[str], i: int, lone_i: bool) -> bool:
    """A numeral of two letters or more ("II", "XIV"); with `lone_i`, also "I" after a
    capitalised word that does not open a question before the pronoun ("World War I",
    "Type I", but not "Can I", "Today I")."""
    tok = tokens[i]
    if len(tok) > 1:
        return _ROMAN.fullmatch(tok) is not None
    before = tokens[i - 1] if i >= 1 else ""
    return lone_i and tok == "I" and before[:1].isupper() and before.lower() not in _OPEN_A_SENTENCE


def _roman_value(tok: str) -> int:
    values = [_ROMAN_VALUES[c] for c in tok]
    return sum(-v if v < nxt else v for v, nxt in zip(values, [*values[1:], 0], strict=True))


def _negations(lower: list[str]) -> int:
    """How many negations turn the question around. "whether or not" and "why or why not" ask
    both ways, and so does "should/shouldn't": those do not count."""
    return sum(
        1
        for i, t in enumerate(lower)
        if (t in _NEGATIONS or t.endswith("n't"))
        and not (t == "not" and "or" in lower[max(0, i - 2) : i])
        and not (i and t.endswith("n't") and t.startswith(lower[i - 1]))
    )


@lru_cache(maxsize=512)
def _forms(stem: str) -> frozenset[str]:
    """The stem and its regular inflections (close: closes, closed, closing, closer, closest)."""
    base = stem[:-1] if stem.endswith("e") else stem
    suffixes = ("", "s", "es", "d", "ed", "r", "er", "st", "est", "ing", "ly")
    return frozenset({stem + x for x in suffixes} | {base + "ing", base + "ed", base + "est"})


def _polar_forms() -> dict[str, tuple[tuple[int, int], ...]]:
    table: dict[str, list[tuple[int, int]]] = {}
    for pair, (left, right) in enumerate(_OPPOSITES):
        for side, stem in ((1, left), (2, right)):
            for form in _forms(stem):
                table.setdefault(form, []).append((pair, side))
    return {form: tuple(v) for form, v in table.items()}


_POLAR_FORMS = _polar_forms()


def _named_in(name: str, words: frozenset[str]) -> bool:
    """Is the name on the other side? A plural or abbreviation counts (US / USA, Painter /
    Painters): one word starts the other and they differ by at most 3 letters."""
    if name in words:
        return True
    if len(name) < 2:
        return False
    return any(
        abs(len(w) - len(name)) <= 3 and (w.startswith(name) or name.startswith(w))
        for w in _by_prefix(words).get(name[:2], ())
    )


@lru_cache(maxsize=1024)
def _by_prefix(words: frozenset[str]) -> dict[str, tuple[str, ...]]:
    """Words of two letters or more by their first two: a long context's hundreds of names
    would otherwise each scan all its words (~16 ms for 2 KB of names)."""
    out: dict[str, list[str]] = {}
    for w in words:
        if len(w) >= 2:
            out.setdefault(w[:2], []).append(w)
    return {k: tuple(v) for k, v in out.items()}


def _overlap(a: Signals, b: Signals, ignore: frozenset[str]) -> float:
    """Jaccard overlap of the two word sets, leaving out the words a guard compares."""
    wa, wb = a.words - ignore, b.words - ignore
    return len(wa & wb) / max(len(wa | wb), 1)


# A guard fires only on a minimal pair: texts that agree on everything else. Paraphrases
# reword freely ("at 27" / "at my age"), and vetoing them would cost recall for nothing.
MINIMAL_PAIR_OVERLAP = 0.6


# Negation flips meaning only when it is the difference; "contact Tim Cook" and "contact Tim
# Cook, not by email" add a condition. So the pair must agree on nearly all other words.
NEGATION_OVERLAP = 0.8


def _number_changed(x: tuple[str, ...], y: tuple[str, ...]) -> bool:
    return sorted(x) != sorted(y) and not _within(x, y)


def _within(x: tuple[str, ...], y: tuple[str, ...]) -> bool:
    """Is one sequence the other with items added (a subsequence of it)?"""
    short, long = (x, y) if len(x) <= len(y) else (y, x)
    rest = iter(long)
    return all(item in rest for item in short)


def _appended(x: tuple[str, ...], y: tuple[str, ...]) -> bool:
    """Is one text the other with a clause added at the end? A negation there sets a
    condition ("How can I change my country? If I can't, ...") and leaves the question as is."""
    short, long = (x, y) if len(x) <= len(y) else (y, x)
    return len(short) < len(long) and long[: len(short)] == short


def _roles(tokens: tuple[str, ...]) -> list[tuple[str, str]]:
    """(directional word, the word it governs), sorted: "to Chicago", "from Boston". A phrase
    that only moves ("better, to live with" / "better to live with") keeps its roles."""
    return sorted(
        (t, tokens[i + 1] if i + 1 < len(tokens) else "") for i, t in enumerate(tokens) if t in _DIRECTIONAL
    )


def _typo(x: str, y: str) -> bool:
    """One slip of the keyboard inside a name of 5+ letters: a letter changed, added or dropped,
    or two adjacent letters swapped (Qoura / Quora, Hellen / Helen, Rothchilds / Rothschilds).
    Names that differ at the start or by more (Ethanol / Methanol, Austria / Australia) are
    different names."""
    if min(len(x), len(y)) < 5 or x[0] != y[0] or abs(len(x) - len(y)) > 1:
        return False
    head = next((i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y)))
    if len(x) != len(y):  # the longer one has one letter more
        return x[head + 1 :] == y[head:] if len(x) > len(y) else y[head + 1 :] == x[head:]
    if x[head + 1 :] == y[head + 1 :]:
        return True
    return x[head + 2 :] == y[head + 2 :] and x[head : head + 2] == y[head : head + 2][::-1]


def _acronym_of(name: str, other: Signals) -> frozenset[str]:
    """The capitalised words a short name abbreviates in the other text, if their initials
    spell it (US / United States, NPD / Narcissistic Personality Disorder, WoT / World of Tanks)."""
    n, tokens = len(name), other.tokens
    if not 2 <= n <= 5:
        return frozenset()
    for i in range(len(tokens) - n + 1):
        run = tokens[i : i + n]
        if (
            "".join(t[0] for t in run) == name
            and run[0] in other.names
            and all(t in other.names or t in _JOINING for t in run)
        ):
            return frozenset(run)
    return frozenset()


def _slot(name: str, tokens: tuple[str, ...]) -> set[str]:
    """The words right before a name: where it sits in the sentence."""
    return {tokens[i - 1] for i, t in enumerate(tokens) if t == name and i}


def _substituted(only_a: frozenset[str], only_b: frozenset[str], a: Signals, b: Signals) -> bool:
    """Does a name of one text stand where another name stands in the other ("in Montreal"
    / "in Hamilton"), rather than one text merely naming more ("the Browns" / "the
    Cleveland Browns")?"""
    return any(not _typo(x, y) and _slot(x, a.tokens) & _slot(y, b.tokens) for x in only_a for y in only_b)


# What a question asks for, read from its opening words ("In which year ..."). Inside one
# conversation two follow-ups on the same thing that ask for different kinds of answer ("Where
# was she born?" / "When did she die?") are different questions, however close their vectors.
_ANSWER_KINDS = (
    ("time", ("when", "what year", "which year", "what decade", "which decade", "what century",
              "which century", "what date", "which date", "what month", "which month", "what day",
              "which day", "how long ago")),
    ("person", ("who", "whom", "whose")),
    ("place", ("where", "what country", "which country", "what city", "which city", "what place",
               "which place")),
    ("reason", ("why",)),
    ("amount", ("how many", "how much")),
)  # fmt: skip
_LEADING = frozenset("in on at by during from since until to and so but then".split())


def answer_kind(text: str) -> str | None:
    """The kind of answer a question opens by asking for, or None: no such opening, or two
    kinds at once ("When and where was it built?")."""
    lower = _TOKEN.findall(text.lower())
    i = 0
    while i < min(len(lower), 2) and lower[i] in _LEADING:
        i += 1
    found = {kind for j in (i, i + 2) for kind in [_kind_at(lower, j)] if kind}
    return found.pop() if len(found) == 1 else None


def _kind_at(lower: list[str], i: int) -> str | None:
    spans = {" ".join(lower[i : i + n]) for n in (1, 2, 3)}
    for kind, phrases in _ANSWER_KINDS:
        if not spans.isdisjoint(phrases):
            return kind
    return None


def asks_another_kind(query: str, cached: str) -> bool:
    """Do the two questions open by asking for different kinds of answer (a time and a place)?
    The cache applies this to follow-ups only: QQP labels some such standalone pairs duplicates
    ("Who discovered plate tectonics and how?" / "When and how was plate tectonics discovered?")."""
    a, b = answer_kind(query), answer_kind(cached)
    return a is not None and b is not None and a != b


def names_a_new_turn(asked_context: str, cached_context: str) -> bool:
    """Does the latest turn of one context chain (turns joined by newlines, as the cache keeps
    them) name something the other chain never mentions? "What is its population?" after
    "Tell me about France" / "Tell me about Germany" asks about Germany, although the two-turn
    chain embeds at cosine 0.84 to "Tell me about France" alone. Applied only where a chain
    holds two turns or more, so one-turn contexts that are paraphrases ("Explain relativity" /
    "Explain Einstein's relativity") are left to the other guards."""
    a, b = asked_context.split("\n"), cached_context.split("\n")
    if max(len(a), len(b)) < 2 or a[-1] == b[-1]:
        return False
    return any(
        not _named_in(name, signals(other).words)
        for last, other in ((a[-1], cached_context), (b[-1], asked_context))
        for name in signals(last).names
    )


def veto(
    query: str, cached: str, query_unseen: Sequence[str] = (), cached_unseen: Sequence[str] = ()
) -> str | None:
    """Why `cached` must not answer `query` despite their similarity; None when no guard objects.

    `*_unseen`: the spans of each text the encoder cannot see (`Encoder.unseen`). Their
    vectors cannot tell "what does the 🍕 emoji mean?" from "... the 🚀 emoji ...", so those
    spans must match exactly.
    """
    if Counter(query_unseen) != Counter(cached_unseen):
        return "unseen"
    a, b = signals(query), signals(cached)
    # A number changed, not merely added or moved: "the first 20 numbers" and "the first 20
    # numbers (1 to 20)" ask the same, and so do "the 2016 or 2015 model" and "the 2015 model or
    # the 2016 model"; "in 5 minutes" and "in 10 minutes" do not.
    a_numbers = a.numbers_lone_i if b.roman or a.lone_i_slots & b.number_slots else a.numbers
    b_numbers = b.numbers_lone_i if a.roman or b.lone_i_slots & a.number_slots else b.numbers
    if all(map(_number_changed, a_numbers, b_numbers)):
        written = frozenset(w for w in a.words | b.words if w[0].isdigit() or _ROMAN.fullmatch(w.upper()))
        if _overlap(a, b, written | _NUMBER_WORDS.keys() | _MAGNITUDES.keys()) >= MINIMAL_PAIR_OVERLAP:
            return "numbers"
    if (
        a.negated[0] != b.negated[0]
        and a.negated[1] != b.negated[1]
        and _overlap(a, b, _NEGATIONS) >= NEGATION_OVERLAP
        and not _appended(a.tokens, b.tokens)
    ):
        return "negation"
    b_polar = dict(b.polar)
    for pair, side in a.polar:
        # One text has only one side of the pair, the other only the opposite side.
        if {side, b_polar.get(pair, 0)} == {1, 2}:
            left, right = _OPPOSITES[pair]
            if _overlap(a, b, _forms(left) | _forms(right)) >= MINIMAL_PAIR_OVERLAP:
                return "polarity"
    if a.words == b.words and a.order != b.order and _roles(a.tokens) != _roles(b.tokens):
        return "order"  # same words, swapped roles: "from Boston to Chicago" / "from Chicago to Boston"
    only_a = frozenset(n for n in a.names if not _named_in(n, b.words))
    only_b = frozenset(n for n in b.names if not _named_in(n, a.words))
    # An acronym on one side and its words spelt out on the other name one thing.
    spelt_in_b = {n: _acronym_of(n, b) for n in only_a}
    spelt_in_a = {n: _acronym_of(n, a) for n in only_b}
    only_a = frozenset(n for n in only_a if not spelt_in_b[n]).difference(*spelt_in_a.values())
    only_b = frozenset(n for n in only_b if not spelt_in_a[n]).difference(*spelt_in_b.values())
    if (
        only_a
        and only_b
        and _overlap(a, b, only_a | only_b) >= MINIMAL_PAIR_OVERLAP
        and _substituted(only_a, only_b, a, b)
    ):
        return "entities"
    return None
