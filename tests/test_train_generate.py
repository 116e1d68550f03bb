"""`python -m train.generate`: the prep template with add_generation_prompt, stopping at <|im_end|>."""
from __future__ import annotations

import torch
from click.testing import CliRunner

from tests.train_helpers import IM_END, IM_START, chatml_tokenizer, one_thread  # noqa: F401
from train.generate import main, render, reply_ids
from train.model import load_model


def one_token_model(token: int = IM_END):
    """A tiny model whose every greedy choice is `token`: the final hidden state is a
    constant vector (ln_f scale 0, bias v) and only that token's embedding points along v."""
    model = load_model("tiny", chatml_tokenizer()).eval()
    with torch.no_grad():
        v = torch.randn(model.config.n_embd)
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(v)
        model.transformer.wte.weight.mul_(0.01)
        model.transformer.wte.weight[token] = 10 * v
    return model


def tokenizer_id(text: str) -> int:
    (token,) = chatml_tokenizer().encode(text)
    return token


def test_prompt_is_rendered_with_the_generation_prompt():
    ids = render(chatml_tokenizer(), "Give three tips for staying healthy.")["input_ids"][0].tolist()
    text = chatml_tokenizer().decode(ids)
    assert text == "<|im_start|>user\nGive three tips for staying healthy.<|im_end|>\n<|im_start|>assistant\n"
    assert ids[0] == IM_START


def test_generation_stops_at_im_end(one_thread):
    ids = reply_ids(one_token_model(IM_END), chatml_tokenizer(), "Hello?", max_new_tokens=20)
    assert ids.tolist() == [IM_END]


def test_cli_prints_the_reply_of_a_saved_checkpoint(tmp_path, one_thread):
    model, tokenizer = one_token_model(tokenizer_id("Hello")), chatml_tokenizer()
    model.save_pretrained(tmp_path / "best")
    tokenizer.save_pretrained(tmp_path / "best")
    result = CliRunner().invoke(main, [str(tmp_path / "best"), "Give three tips.", "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "HelloHelloHelloHello\n"
    missing = CliRunner().invoke(main, [str(tmp_path / "nope"), "hi"])
    assert missing.exit_code == 1 and missing.stderr.startswith("error: ")


def test_an_alpaca_trained_tokenizer_gets_the_preamble_and_raw_does_not(tmp_path, one_thread):
    from shards.prompts import ALPACA_PREAMBLE, set_prompt_format

    model, tokenizer = one_token_model(tokenizer_id("Hello")), chatml_tokenizer()
    set_prompt_format(tokenizer, "alpaca")
    text = tokenizer.decode(render(tokenizer, "Hi?")["input_ids"][0])
    assert text == f"<|im_start|>user\n{ALPACA_PREAMBLE}Hi?<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(render(tokenizer, "Hi?", raw=True)["input_ids"][0]).startswith("<|im_start|>user\nHi?")
    model.save_pretrained(tmp_path / "best")
    tokenizer.save_pretrained(tmp_path / "best")
    for extra in ([], ["--raw"]):
        result = CliRunner().invoke(main, [str(tmp_path / "best"), "Hi?", "--max-new-tokens", "1", *extra])
        assert result.exit_code == 0 and result.stdout == "Hello\n", result.output


def test_a_repetition_penalty_stops_the_same_token_winning_again(tmp_path, one_thread):
    """The one-token model repeats "Hello" greedily; a penalty that divides its logit by 1e6 once it has
    appeared lets another token win the next step (the report's sampled decoding uses 1.3)."""
    hello = tokenizer_id("Hello")
    model, tokenizer = one_token_model(hello), chatml_tokenizer()
    plain = reply_ids(model, tokenizer, "Hi?", max_new_tokens=3).tolist()
    penalised = reply_ids(model, tokenizer, "Hi?", max_new_tokens=3, repetition_penalty=1e6).tolist()
    assert plain == [hello] * 3
    assert penalised[0] == hello and hello not in penalised[1:]
    model.save_pretrained(tmp_path / "best")
    tokenizer.save_pretrained(tmp_path / "best")
    refused = CliRunner().invoke(main, [str(tmp_path / "best"), "hi", "--repetition-penalty", "0"])
    assert refused.exit_code == 2 and "--repetition-penalty" in refused.output
