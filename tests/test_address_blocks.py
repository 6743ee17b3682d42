"""normalise_block: a block of an import's texts, each normalised by the short check or left to normalise_address.

Its contract, per text: the normalised address where the short ASCII check takes the text, else None
(the caller then asks normalise_address, which explains a refusal). One result per text, in order.
"""

from __future__ import annotations

from state.addresses import _SHORT, normalise_address, normalise_block

LONGEST = "a" * (_SHORT - len("@x.io")) + "@x.io"  # exactly _SHORT characters: the short check still takes it


def test_a_block_of_ordinary_texts_is_lower_cased_and_stripped():
    assert normalise_block(["  Ann@Example.COM ", "bob@example.org"]) == ["ann@example.com", "bob@example.org"]


def test_a_block_with_a_non_ascii_text_is_checked_text_by_text():
    # The non-ASCII text is left to normalise_address; the others are still lower-cased and taken.
    assert normalise_block(["zoë@example.com", " Bob@Example.ORG", LONGEST.upper()]) == [
        None, "bob@example.org", LONGEST]
    assert normalise_address(LONGEST.upper()) == LONGEST


def test_a_text_of_exactly_the_short_length_is_taken():
    assert len(LONGEST) == _SHORT
    assert normalise_block([LONGEST, "not an address"]) == [LONGEST, None]


def test_a_text_holding_a_line_break_is_one_text_never_two_addresses():
    # Joined with line breaks for the one-pass check, such a text must not split into two results.
    assert normalise_block(["a@x.io\nb@y.io"]) == [None]
    assert normalise_block(["a@x.io\nb@y.io\nc@z.io"]) == [None]
    assert normalise_block(["a@x.io\nb@y.io", "c@z.io"]) == [None, "c@z.io"]
    assert normalise_block(["c@z.io", "a@x.io\nb@y.io\nd@w.io"]) == ["c@z.io", None]


def test_an_empty_block_gives_no_results():
    assert normalise_block([]) == []
