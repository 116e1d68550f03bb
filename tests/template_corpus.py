"""Every chat template of the corpus through prep's encoder, each mask checked by an oracle that
knows nothing of how the encoder builds it.

    python -m tests.template_corpus                     # one line per template: accepted or why not
    python -m tests.template_corpus --readme docs/prep.md   # the families table, between its markers

The oracle (`oracle_problems`) renders the conversation with its real contents and decodes the
encoder's ids: the whole must decode to the render, and each run of supervised tokens must be,
for each reply the template renders, the render's text from the end of the generation prompt
(where that prompt is a prefix of the render; else from after the previous message) through the
reply and the first special token after it. Nothing of another message may be supervised.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass

from prep.chat_plan import special_tokens
from prep.conversations import message_fields
from prep.template import ChatFormatError, ConversationEncoder, ensure_chat_format
from shards.prompts import render_chat, set_template_options
from tests import real_tokenizers as corpus

SYSTEM_MULTI_TURN = (
    ("system", "Answer in one short sentence."),
    ("user", "What is the capital of France?"),
    ("assistant", "Paris is the capital of France."),
    ("user", "And of Italy?"),
    ("assistant", "Rome, of course."),
)
ONE_TURN = (("user", "Name a primary colour."), ("assistant", "Blue."))
REASONING = (("user", "What is 2 + 3?"), ("assistant", "The sum is 5.", "Two plus three makes five."))
# Templates that close the last reply only when told they render training data: the option their authors
# give for it, passed as a user passes it (--chat-template-kwargs).
TRAINING_OPTIONS = {
    "Apriel-1.6-15b-Thinker-fixed": {"training_prompt": True},
    "tencent-Hy3": {"is_training": True},
}
CONVERSATIONS = {"system-2-turns": SYSTEM_MULTI_TURN, "1-turn": ONE_TURN, "reasoning": REASONING}
# A tool call, its result and the reply after it (OpenAI/Hugging Face chat format).
TOOL_RECORD = {
    "messages": [
        {"role": "system", "content": "You can look up the weather."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call12345", "type": "function", "function": {
            "name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "temperature=18C sky=clear", "tool_call_id": "call12345", "name": "get_weather"},
        {"role": "assistant", "content": "It is 18 degrees and clear in Paris."}],
    "tools": [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                                  "parameters": {"type": "object", "required": ["city"],
                                                                 "properties": {"city": {"type": "string"}}}}}],
}


@dataclass
class Result:
    stem: str
    vocab: str | None  # None: the stand-in tokenizer
    accepted: bool
    reason: str  # the refusal's one line, or "" when accepted
    end_of_turn: str = ""
    system_message: str = "keep"  # the policy under which the system conversation was accepted
    dropped: str = ""
    closed: str = ""  # the token prep adds after a last reply the template leaves open
    prompt_matches_generation: bool = True
    problems: tuple = ()  # oracle failures: an accepted template with a wrong mask
    hand_over: str = ""  # the token that ends a reply calling a tool (TOOL_RECORD), "" where refused
    tools: str = ""  # why TOOL_RECORD was refused, or what is wrong with its mask


def tool_spans(tokenizer, record: dict):
    """The supervised texts of `record` (a chat record with tools), the end-of-turn token and the encoder."""
    from prep.records import conversation, tools_of

    messages, _ = conversation(record)
    tools = tools_of(record)
    encoder = ConversationEncoder(tokenizer, encoder="tokenizers")
    ids, mask, offsets = encoder.encode([messages], [tools])
    bad = encoder.check_prompts([messages], ids, offsets, [tools], mask)
    if bad is not None:
        raise ChatFormatError(bad[1])
    end = tokenizer.convert_ids_to_tokens(encoder.end_of_turn_id)
    return [tokenizer.decode(ids[a:b]) for a, b in _runs(mask.tolist())], end, encoder


def _tool_check(tokenizer) -> tuple[str, str]:
    """(hand-over token, "") for TOOL_RECORD learned as it should be: the call through its hand-over, then the
    reply through its end of turn, nothing of the user or the tool result; else ("", why not)."""
    try:
        spans, end, encoder = tool_spans(tokenizer, TOOL_RECORD)
    except ChatFormatError as e:
        return "", str(e).splitlines()[0]
    call, reply = spans[0], spans[-1]
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(call, add_special_tokens=False)["input_ids"])
    if (len(spans) != 2 or "get_weather" not in call or "Paris" not in call or "temperature=18C" in "".join(spans)
            or not reply.endswith(end) or not reply[: -len(end)].rstrip().endswith("It is 18 degrees and clear in Paris.")):
        return "", f"WRONG MASK: {spans}"
    return tokens[-1], ""


def _decoded_between(tokenizer, ids: list[int], a: int, b: int) -> str:
    """The text of ids[a:b] as it reads inside the whole (decoding a piece alone can drop a leading space)."""
    before = tokenizer.decode(ids[:a], clean_up_tokenization_spaces=False)
    upto = tokenizer.decode(ids[:b], clean_up_tokenization_spaces=False)
    return upto[len(before):] if upto.startswith(before) else tokenizer.decode(ids[a:b], clean_up_tokenization_spaces=False)


def _covered(render: str, offsets: list[tuple[int, int]]) -> str:
    """The render's characters that a run of tokens covers (a SentencePiece "▁" it added covers none)."""
    spans = [(a, b) for a, b in offsets if b > a]
    return render[spans[0][0]:spans[-1][1]] if spans else ""


def _runs(mask: list[int]) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, bit in enumerate(mask + [0]):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            runs.append((start, i))
            start = None
    return runs


def _messages(conversation) -> list[dict]:
    out = []
    for m in conversation:
        role, content, reasoning = message_fields(m)
        out.append({"role": role, "content": content, **({"reasoning_content": reasoning} if reasoning else {})})
    return out


def _final_closer(tokenizer, messages: list[dict], render: str) -> str:
    """The special token that closes the last reply when a user turn follows, where the render leaves
    that reply open (nothing after it); "" otherwise. Prep adds exactly this token."""
    reply = messages[-1]["content"].strip()
    if messages[-1]["role"] != "assistant" or not render.rstrip().endswith(reply):
        return ""
    longer = render_chat(tokenizer, messages + [{"role": "user", "content": "Next question?"}])
    specials = re.compile("|".join(map(re.escape, special_tokens(tokenizer))))
    after = longer.rfind(reply) + len(reply)
    found = specials.search(longer, after)
    return found.group(0) if found and not longer[after:found.start()].strip() else ""


def oracle_problems(tokenizer, conversation, ids: list[int], mask: list[int]) -> list[str]:
    """What is wrong with (ids, mask) for `conversation` (after --system-message); [] when exact."""
    messages = _messages(conversation)
    render = render_chat(tokenizer, messages)
    render += _final_closer(tokenizer, messages, render)
    # Where the ids are the tokenizer's own for the render, each token's characters come from its offsets;
    # else (a BPE merge across a prompt/reply cut) the ids must at least decode to the render.
    reference = tokenizer.backend_tokenizer.encode(render, add_special_tokens=False)
    offsets = reference.offsets if reference.ids == ids else None
    whole = tokenizer.decode(ids, clean_up_tokenization_spaces=False)
    if offsets is None and whole != render:
        return [f"ids decode to {whole[-120:]!r}, the template renders {render[-120:]!r}"]
    specials = re.compile("|".join(map(re.escape, special_tokens(tokenizer))))
    expected, cursor = [], 0
    for k, message in enumerate(messages):
        text = message["content"].strip()
        found = render.find(text, cursor)
        if found < 0:
            continue  # a message the template leaves out
        end = found + len(text)
        if message["role"] != "assistant":
            cursor = end
            continue
        prompt = render_chat(tokenizer, messages[:k], add_generation_prompt=True)
        start = len(prompt) if render.startswith(prompt) else None
        closer = specials.search(render, end)
        if closer is None:
            return [f"reply {k} has no special token after it"]
        expected.append((start, cursor, found, closer.end()))
        cursor = closer.end()
    spans = [_decoded_between(tokenizer, ids, a, b) if offsets is None else _covered(render, offsets[a:b])
             for a, b in _runs(mask)]
    if len(spans) != len(expected):
        return [f"{len(spans)} supervised spans {spans!r} for {len(expected)} rendered replies"]
    problems = []
    for span, (start, after, found, stop) in zip(spans, expected):
        if start is not None and span != render[start:stop]:
            problems.append(f"supervised {span!r}, expected {render[start:stop]!r}")
        elif start is None and not (render[found:stop] in span and span in render[after:stop]):
            problems.append(f"supervised {span!r} is not the reply {render[found:stop]!r} plus template text")
    return problems


def _encode(encoder: ConversationEncoder, conversation):
    ids, mask, offsets = encoder.encode([conversation])
    bad = encoder.check_prompts([conversation], ids, offsets)
    if bad is not None:
        raise ChatFormatError(bad[1])
    return encoder.prepare(conversation), ids.tolist(), mask.tolist()


def corpus_tokenizer(stem: str):
    """(tokenizer with the template, vocab or None) for a template file stem or an OWN_TEMPLATES entry."""
    if stem in corpus.OWN_TEMPLATES:
        vocab = corpus.OWN_TEMPLATES[stem]
        return ensure_chat_format(corpus.real_tokenizer(vocab)), vocab
    vocab = corpus.TEMPLATES.get(stem)
    vocab = vocab if vocab and corpus.vocab_ready(vocab) else None  # a vocabulary left out: the stand-in
    return ensure_chat_format(corpus.real_tokenizer(vocab, stem) if vocab else corpus.standin_tokenizer(stem)), vocab


def run_template(stem: str) -> Result:
    """Encode each conversation with the template and its tokenizer; refusals are results, wrong masks problems."""
    tokenizer, vocab = corpus_tokenizer(stem)
    set_template_options(tokenizer, TRAINING_OPTIONS.get(stem, {}), "2026-01-05")
    result = Result(stem, vocab, True, "")
    encoders: dict[str, ConversationEncoder] = {}  # one per --system-message policy (building one reads the vocab)
    problems = []
    try:
        for name, conversation in CONVERSATIONS.items():
            for policy in ("keep", "fold"):  # a template that refuses a system turn may take it folded
                try:
                    if policy not in encoders:
                        # the fast tokenizer: what the oracle checks is the mask; tiktoken's ids are tested apart
                        encoders[policy] = ConversationEncoder(tokenizer, encoder="tokenizers", system_message=policy)
                    prepared, ids, mask = _encode(encoders[policy], conversation)
                    break
                except ChatFormatError:
                    if policy == "fold" or not any(m[0] == "system" for m in conversation):
                        raise
            if policy == "fold":
                result.system_message = "fold"
            problems += [f"{name}: {p}" for p in oracle_problems(tokenizer, prepared, ids, mask)]
    except ChatFormatError as e:
        return Result(stem, vocab, False, str(e).splitlines()[0])
    result.dropped = ", ".join(sorted({role for e in encoders.values() for role in e.dropped}))
    result.prompt_matches_generation = not any(e.mismatches for e in encoders.values())
    result.closed = ", ".join(sorted({token for e in encoders.values() for token in e.closed}))
    result.end_of_turn = tokenizer.convert_ids_to_tokens(encoders["keep"].end_of_turn_id)
    result.problems = tuple(problems)
    result.hand_over, result.tools = _tool_check(tokenizer)
    return result


def run_corpus() -> list[Result]:
    own = [stem for stem, vocab in corpus.OWN_TEMPLATES.items() if corpus.vocab_ready(vocab)]
    return [run_template(stem) for stem in sorted(corpus.TEMPLATES)] + [run_template(stem) for stem in own]


def table(results: list[Result]) -> str:
    from sftcli import markdown_table

    rows = []
    for r in results:
        status = "yes" if r.accepted and not r.problems else "WRONG MASK" if r.accepted else "refused"
        notes = [] if r.accepted else [r.reason.replace("|", "\\|")]
        if r.accepted:
            options = TRAINING_OPTIONS.get(r.stem)
            notes += [f"--chat-template-kwargs '{json.dumps(options)}'" if options else ""]
            notes += [f"--system-message {r.system_message}" if r.system_message != "keep" else ""]
            notes += [f"leaves out: {r.dropped}" if r.dropped else ""]
            notes += [f"leaves the last reply open: prep adds `{r.closed}`" if r.closed else ""]
            notes += ["" if r.prompt_matches_generation else "a training prompt differs from generation's"]
        tools = f"`{r.hand_over}`" if r.hand_over else "-" if not r.accepted else "refused" if "WRONG" not in r.tools \
            else "WRONG MASK"
        rows.append([r.stem, r.vocab or "stand-in (GPT-2 BPE + the template's tokens)", status,
                     f"`{r.end_of_turn}`" if r.accepted else "-", tools, "; ".join(n for n in notes if n)])
    accepted = sum(r.accepted and not r.problems for r in results)
    calls = sum(bool(r.hand_over) for r in results)
    head = (f"{accepted} of {len(results)} templates accepted with exact masks ({accepted / len(results):.0%}), "
            "each checked by the oracle in tests/template_corpus.py. Supervised: each reply, the template's text "
            f"between the generation prompt and it, and the end-of-turn token. {calls} of them also learn a tool call "
            "(`tool call`: the token that hands the turn to the tool; the refusals' reasons are in the next "
            "table).\n\n")
    refusals = [[r.stem, r.tools.replace("|", "\\|")] for r in results if r.accepted and not r.hand_over]
    return (head + markdown_table(["template", "tokenizer", "accepted", "end of turn", "tool call", "notes"], rows)
            + "\n\nTool calls refused:\n\n" + markdown_table(["template", "why"], refusals))


def main(argv: list[str]) -> int:
    results = run_corpus()
    if "--readme" in argv:
        path = argv[argv.index("--readme") + 1]
        text = open(path, encoding="utf-8").read()
        start, end = "<!-- template-families -->", "<!-- /template-families -->"
        if start not in text:
            raise SystemExit(f"{path}: no {start} marker to write the table under")
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1] if end in rest else rest
        open(path, "w", encoding="utf-8").write(f"{head}{start}\n{table(results)}\n{end}{tail}")
    else:
        print(table(results))
    return 0 if all(not r.problems for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
