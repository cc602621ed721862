"""What the tokenizer tells a text parser: which markers are one token, and whether the
text received so far ends on a token boundary (pure Python over a tokenizer object).

A marker that is a single token (every tool marker; `<think>`/`</think>` in the R1 and
V3.1 tokenizers, not in V3's) reaches the detokenizer whole, so a delta that ends on a
token boundary cannot end inside it: "<" or "</th" at its end is text, not the start
of a marker, and need not be held back. vLLM's deltas are token-aligned except when the
detokenizer waits for the rest of a UTF-8 character or cuts a stop string; a test
harness may split anywhere. `TokenBoundary` tells these apart exactly by counting
bytes: the UTF-8 length of the text so far against the byte length of its tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["TokenBoundary", "atomic_markers"]

_PROBE = "é 北<｜ x🤖"  # multi-byte, byte-fallback and marker-like text


def _byte_alphabet() -> frozenset[str]:
    # Byte-level BPE (GPT-2) spells byte b as chr(b) when printable, else chr(256 + n).
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = 256 - len(printable)
    return frozenset(map(chr, printable)) | frozenset(chr(256 + n) for n in range(others))


_BYTE_ALPHABET = _byte_alphabet()


def atomic_markers(tokenizer, markers: Iterable[str]) -> frozenset[str]:
    """The markers `tokenizer` encodes as a single token."""
    return frozenset(m for m in markers
                     if len(tokenizer.encode(m, add_special_tokens=False)) == 1)


class TokenBoundary:
    """Feed each delta's text and token ids in order; `advance` says whether the text so
    far ends exactly where its tokens end.

    It only ever errs towards False (hold the text a little longer): a tokenizer whose
    token strings are not byte-level BPE, or ids and text that drift apart (special
    tokens the detokenizer skipped or kept, a stop string cut from the text), make it
    answer False from then on or until the two counts meet again.
    """

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        # Dropped from the text by vLLM's default skip_special_tokens.
        self._skipped = frozenset(getattr(tokenizer, "all_special_ids", ()) or ())
        self._text_bytes = 0
        self._token_bytes = 0
        probe = tokenizer.encode(_PROBE, add_special_tokens=False)
        self._byte_level = self._bytes(probe) == len(_PROBE.encode())

    def _bytes(self, ids: Sequence[int]) -> int:
        # A byte-level token spells each of its bytes as one character of the byte
        # alphabet; an added token (a marker) is written as its content.
        total = 0
        for i, piece in zip(ids, self._tokenizer.convert_ids_to_tokens(list(ids))):
            if i in self._skipped or not piece:
                continue
            total += len(piece) if _BYTE_ALPHABET.issuperset(piece) else len(piece.encode())
        return total

    def advance(self, text: str, token_ids: Sequence[int]) -> bool:
        self._text_bytes += len(text.encode())
        if token_ids:
            self._token_bytes += self._bytes(token_ids)
        return self._byte_level and self._text_bytes == self._token_bytes
