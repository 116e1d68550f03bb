"""Answer one prompt with a trained checkpoint, rendered as prep rendered its training prompts.

    python -m train.generate runs/concat/best "Give three tips for staying healthy."
    # prints the assistant's reply (generation stops at the template's end of turn, e.g. <|im_end|>)
    python -m train.generate runs/concat/best --raw "Below is an instruction ..."
    # sends the text as the user turn unchanged, whatever prompt format the shards used
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from shards.prompts import prompt_format_of, render_chat, user_turn


def render(tokenizer, prompt: str, raw: bool = False) -> dict:
    """The prompt as one user turn plus the assistant header, by the tokenizer's own chat template.

    The tokenizer saved with a checkpoint is the one prep saved with the shards, and it
    records the prompt format and the template's options prep used (`shards.prompts`): an Alpaca-trained
    model gets the source article's preamble around the question, as every training prompt had. `raw` sends
    the text unchanged.
    """
    text = prompt if raw else user_turn(prompt_format_of(tokenizer), prompt)
    # The template's options and date as prep recorded them (shards.prompts.render_chat); the specials it
    # writes (bos, headers) are parsed as tokens, as apply_chat_template(tokenize=True) does.
    rendered = render_chat(tokenizer, [{"role": "user", "content": text}], add_generation_prompt=True)
    return tokenizer(rendered, add_special_tokens=False, return_tensors="pt")


def reply_ids(model, tokenizer, prompt: str, *, max_new_tokens: int = 256, temperature: float = 0.0,
              top_p: float = 1.0, seed: int = 0, raw: bool = False, repetition_penalty: float = 1.0):
    """Generated token ids after the prompt, up to and including the end-of-turn token; greedy at temperature 0.
    `repetition_penalty` above 1 makes every token already in the prompt or the reply less likely
    (transformers' CTRL penalty: a positive logit divided by it, a negative one multiplied).

    Where to stop comes from the model's generation config, which train set from the shard
    manifest's `end_of_turn_token_id` (`<|eot_id|>` for a Llama-3 template, not its eos).
    """
    import torch

    encoded = render(tokenizer, prompt, raw)
    torch.manual_seed(seed)
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
    with torch.no_grad():
        output = model.generate(**encoded, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                repetition_penalty=repetition_penalty, **sampling)
    return output[0, encoded["input_ids"].shape[1]:]


def generate(model_dir: Path, prompt: str, **options) -> str:
    """The reply text of the checkpoint in `model_dir` (special tokens dropped)."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()  # keep stdout/stderr to the reply
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    return tokenizer.decode(reply_ids(model, tokenizer, prompt, **options), skip_special_tokens=True).strip()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("prompt")
@click.option("--max-new-tokens", default=256, show_default=True, help="most tokens to generate")
@click.option("--temperature", default=0.0, show_default=True, help="sampling temperature; 0 is greedy")
@click.option("--top-p", default=1.0, show_default=True, help="nucleus sampling mass (with --temperature > 0)")
@click.option("--seed", default=0, show_default=True, help="sampling seed")
@click.option("--repetition-penalty", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="above 1, tokens already in the prompt or the reply are less likely (1.2-1.3 is usual)")
@click.option("--raw", is_flag=True, help="send PROMPT as the user turn unchanged (no Alpaca preamble)")
def main(*, model_dir: Path, prompt: str, max_new_tokens: int, temperature: float, top_p: float, seed: int,
         repetition_penalty: float, raw: bool) -> None:
    """Print the model's reply to PROMPT (MODEL_DIR: a run's best/ or last/ folder)."""
    if not (model_dir / "config.json").is_file():
        click.echo(f"error: {model_dir} is not a model folder (no config.json); pass a run's best/ folder", err=True)
        sys.exit(1)
    click.echo(generate(model_dir, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                        seed=seed, raw=raw, repetition_penalty=repetition_penalty))


if __name__ == "__main__":
    main()
