"""FirstSeen, with plain values: a refused Origin is logged once, a flood costs little."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from roomcast.protocol.lognotes import FirstSeen, Note


def test_each_text_is_noted_once() -> None:
    seen = FirstSeen(remember=4)
    assert seen.see("https://app.example", 0.0) == Note("https://app.example")
    assert seen.see("https://app.example", 1.0) is None
    assert seen.see("http://localhost:5173", 2.0) == Note("http://localhost:5173")


def test_past_its_memory_unknown_texts_are_counted_once_per_interval() -> None:
    seen = FirstSeen(remember=2, interval=60.0)
    assert seen.see("a", 0.0) == Note("a") and seen.see("b", 0.0) == Note("b")
    assert seen.see("c", 1.0) == Note(None, 1)
    assert [seen.see(f"x{n}", 2.0 + n) for n in range(5)] == [None] * 5
    assert seen.see("d", 61.0) == Note(None, 6)
    assert seen.see("a", 62.0) is None  # still remembered


@given(st.lists(st.text(max_size=20), max_size=300))
def test_a_flood_of_distinct_texts_costs_at_most_remember_notes_then_one_an_interval(
    texts: list[str],
) -> None:
    seen = FirstSeen(remember=8, interval=60.0)
    notes = [seen.see(text, 0.0) for text in texts]  # all within one interval
    assert sum(note is not None for note in notes) <= 8 + 1
    assert len(seen._seen) <= 8
