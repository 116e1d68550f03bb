"""Text to token ids for prep: tiktoken where it gives the fast tokenizer's ids, the fast tokenizer otherwise.

For byte-level BPE tokenizers that tiktoken can express (GPT-2's, and those that split
with one regex before byte-level BPE, as Llama 3 and Qwen2 do), tiktoken's batch API
encodes the same texts faster. tiktoken looks a whole pre-token up in the vocabulary before
merging, which is what Llama 3's `ignore_merges` does; for the others it gives the same ids
as long as every vocabulary token is what its own merges make, as in vocabularies built by
tiktoken's algorithm (GPT-2's, Qwen's; tested over the whole vocabulary). A Unicode
normalizer (Qwen2's NFC) runs first, the tokenizer's own (`NormalizedEncoding`).

tiktoken's ranks are built from the tokenizer's own vocabulary (offline; nothing is
downloaded), and the first `CHECK_TEXTS` texts of every run are encoded both ways: any
difference, or a tokenizer tiktoken cannot express, falls back to the fast tokenizer with
one line on stderr. So the shards are byte-identical either way, and the manifest records
which encoder ran (`encoder`).

Special-token strings inside texts are plain text for both (special tokens are inserted
as ids by the chat-template plan, never parsed from user text).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Literal, get_args

from sftcli import UserError

EncoderChoice = Literal["auto", "tiktoken", "tokenizers"]
ENCODER_CHOICES: tuple[str, ...] = get_args(EncoderChoice)
CHECK_TEXTS = 1000
UNICODE_FORMS = ("NFC", "NFD", "NFKC", "NFKD")  # normalizers tiktoken can run behind (`NormalizedEncoding`)
# ByteLevel(use_regex=True)'s split: GPT-2's pattern, as tiktoken's own "gpt2" encoding spells it.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class EncoderError(UserError):
    """--encoder tiktoken was asked for and cannot be honoured; the message says why."""


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-to-unicode table, inverted: byte-level BPE spells every byte as one printable char."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _pattern(spec: dict) -> str:
    """The one regex that splits text before byte-level BPE, or ValueError when there is none."""
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("add_prefix_space") or any(step.get("add_prefix_space") for step in pre.get("pretokenizers", [])):
        raise ValueError("it adds a prefix space, which tiktoken does not")
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return GPT2_PATTERN
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if (len(steps) == 2 and steps[0].get("type") == "Split" and steps[0].get("behavior") == "Isolated"
            and not steps[0].get("invert") and "Regex" in steps[0].get("pattern", {})
            and steps[1].get("type") == "ByteLevel" and not steps[1].get("use_regex", True)):
        return steps[0]["pattern"]["Regex"]
    raise ValueError("its pre-tokenizer is not one regex followed by byte-level BPE")


def tiktoken_encoding(tokenizer):
    """A tiktoken Encoding with the tokenizer's ids; ValueError saying why when it cannot be one."""
    try:
        import tiktoken
    except ImportError:
        raise ValueError("tiktoken is not installed (pip install tiktoken)") from None
    backend = tokenizer.backend_tokenizer
    model = backend.model
    if type(model).__name__ != "BPE" or model.byte_fallback or model.dropout not in (None, 0.0):
        raise ValueError("it is not a plain byte-level BPE")
    forms = [step.get("type") for step in _steps(_component(backend, "normalizer"), "normalizers")]
    if any(form not in UNICODE_FORMS for form in forms):
        raise ValueError(f"its normalizer ({', '.join(map(str, forms))}) is not a Unicode normalization form")
    if any(not token.special for token in tokenizer.added_tokens_decoder.values()):
        raise ValueError("it has added non-special tokens, which the fast tokenizer matches inside text")
    pattern = _pattern({"pre_tokenizer": _component(backend, "pre_tokenizer")})
    # Each byte-level character to the latin-1 character of its byte; any other character to one that
    # latin-1 cannot encode (characters outside the table are left as they are, and those above 255 cannot).
    table = {x: "\uffff" for x in range(256)} | {ord(c): chr(b) for c, b in _byte_decoder().items()}
    try:
        ranks = {token.translate(table).encode("latin-1"): rank
                 for token, rank in backend.get_vocab(with_added_tokens=False).items()}
    except UnicodeEncodeError:
        raise ValueError("its vocabulary is not spelled in byte-level characters") from None
    encoding = tiktoken.Encoding(name=f"sftpack-{len(ranks)}", pat_str=pattern, mergeable_ranks=ranks,
                                 special_tokens={})
    return NormalizedEncoding(encoding, backend.normalizer) if forms else encoding


class NormalizedEncoding:
    """A tiktoken Encoding behind the tokenizer's Unicode normalizer (NFC, ...), which the fast
    tokenizer applies to the whole text before splitting it (special-token strings and non-special
    added tokens are not split off here: see `TextEncoder`, `tiktoken_encoding`). The normalizer
    object itself runs, so its Unicode version is the fast tokenizer's; ASCII text is left as is
    (every normalization form leaves it unchanged)."""

    def __init__(self, encoding, normalizer):
        self.encoding, self.normalizer = encoding, normalizer

    def normalize(self, text: str) -> str:
        return text if text.isascii() else self.normalizer.normalize_str(text)

    def encode_ordinary(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(self.normalize(text))

    def encode_ordinary_batch(self, texts: list[str], *, num_threads: int = 8) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch([self.normalize(t) for t in texts], num_threads=num_threads)

    def __getattr__(self, name):  # the rest of tiktoken's Encoding (decode, n_vocab, ...)
        if name == "encoding":
            raise AttributeError(name)
        return getattr(self.encoding, name)


def _component(backend, kind: str) -> dict | None:
    """The backend's normalizer or pre_tokenizer as its JSON spec (reading only that part: the
    whole tokenizer's JSON takes seconds to write for a 150k vocabulary)."""
    part = getattr(backend, kind)
    return json.loads(part.__getstate__()) if part is not None else None


def _steps(component: dict | None, key: str) -> list[dict]:
    if not component:
        return []
    return component.get(key, []) if component.get("type") == "Sequence" else [component]


def prefix_rule(backend) -> str | None:
    """How a SentencePiece-style tokenizer marks the start of text with "▁": "section" (every text
    between special tokens: a Prepend normalizer, or Metaspace prepend_scheme always), "first" (only
    the start of the whole input: Metaspace prepend_scheme first), or None (no such mark)."""
    if any(step.get("type") == "Prepend" for step in _steps(_component(backend, "normalizer"), "normalizers")):
        return "section"
    for step in _steps(_component(backend, "pre_tokenizer"), "pretokenizers"):
        if step.get("type") == "Metaspace":
            scheme = step.get("prepend_scheme", "always" if step.get("add_prefix_space", True) else "never")
            return {"always": "section", "first": "first"}.get(scheme)
    return None


def _without_prefix(backend) -> dict:
    """The backend's normalizer and pre_tokenizer without the start-of-text mark, for text that
    continues a section; swapped in while such texts are encoded (`TextEncoder._tokenizers`)."""
    from tokenizers import Tokenizer

    parts = {}
    for kind, steps_key in (("normalizer", "normalizers"), ("pre_tokenizer", "pretokenizers")):
        spec = _component(backend, kind)
        steps = [step for step in _steps(spec, steps_key) if step.get("type") != "Prepend"]
        for step in steps:
            if step.get("type") == "Metaspace":
                step["prepend_scheme"] = "never"
                step.pop("add_prefix_space", None)
        # tokenizers builds a component only as part of a tokenizer: a stub around it.
        stub = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "post_processor": None,
                "decoder": None, "model": {"type": "WordLevel", "vocab": {"x": 0}, "unk_token": "x"},
                "normalizer": None, "pre_tokenizer": None}
        stub[kind] = {"type": "Sequence", steps_key: steps} if steps else None
        parts[kind] = getattr(Tokenizer.from_str(json.dumps(stub)), kind)
    return parts


class TextEncoder:
    """`encode(texts)` -> ids per text, special-token strings as plain text; `name` is what ran.

    `encode(texts, continued)`: texts flagged as continuing a section (text after text, not after
    a special token) are encoded without SentencePiece's start-of-text "▁" (`prefix_rule`), as the
    tokenizer encodes them inside the whole conversation.
    """

    def __init__(self, tokenizer, choice: str = "auto", verify: bool = True):
        if choice not in ENCODER_CHOICES:
            raise ValueError(f"encoder must be one of {', '.join(ENCODER_CHOICES)}, got {choice!r}")
        self._backend = tokenizer.backend_tokenizer
        self.prefix_rule = prefix_rule(self._backend)
        self._continuing = _without_prefix(self._backend) if self.prefix_rule else None
        self._tiktoken = None
        self._checked = 0 if verify else CHECK_TEXTS  # verify=False: a run's driver checked (prep.workers)
        self.choice = choice
        self.name = "tokenizers"
        if choice != "tokenizers":
            try:
                self._tiktoken = tiktoken_encoding(tokenizer)
                self.name = "tiktoken"
            except ValueError as e:
                self._fall_back(f"tiktoken cannot express this tokenizer: {e}")

    @property
    def tiktoken(self):
        """The tiktoken Encoding `encode` runs (its first texts checked against the fast tokenizer), or None."""
        return self._tiktoken

    @property
    def verified(self) -> bool:
        """Whether the start-of-run check is over (or not needed): the choice of encoder is final."""
        return self._tiktoken is None or self._checked >= CHECK_TEXTS

    def _fall_back(self, why: str) -> None:
        if self.choice == "tiktoken":
            raise EncoderError(f"--encoder tiktoken: {why}; use --encoder auto or tokenizers")
        print(f"prep: encoding with the fast tokenizer ({why})", file=sys.stderr)
        self._tiktoken, self.name = None, "tokenizers"

    def _tokenizers(self, texts: list[str], continued: bool = False) -> list[list[int]]:
        backend = self._backend
        saved = {kind: getattr(backend, kind) for kind in self._continuing} if continued else {}
        backend.encode_special_tokens = True
        try:
            for kind, part in (self._continuing.items() if continued else ()):
                setattr(backend, kind, part)
            return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
        finally:
            backend.encode_special_tokens = False
            for kind, part in saved.items():
                setattr(backend, kind, part)

    def encode(self, texts: list[str], continued: list[bool] | None = None) -> list[list[int]]:
        if self._continuing is not None and continued is not None and any(continued):
            out: list = [None] * len(texts)
            for flag in (False, True):
                where = [i for i, c in enumerate(continued) if c == flag]
                for i, ids in zip(where, self._tokenizers([texts[i] for i in where], flag)):
                    out[i] = ids
            return out
        if self._tiktoken is None:
            return self._tokenizers(texts)
        ids = self._tiktoken.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1)
        if self._checked < CHECK_TEXTS:  # the start of every run (its first batch): both ways, or no tiktoken
            n = min(len(texts), CHECK_TEXTS)
            self._checked = CHECK_TEXTS  # one batch decides, so prep's workers can be told the choice
            reference = self._tokenizers(texts[:n])
            bad = next((i for i in range(n) if ids[i] != reference[i]), None)
            if bad is not None:
                self._fall_back(f"tiktoken's ids differ on text {texts[bad][:40]!r}")
                return self._tokenizers(texts)
        return ids
