"""Answer one prompt with a trained checkpoint, rendered with the chat template prep used.

    python -m train.generate runs/concat/best "Give three tips for staying healthy."
    # prints the assistant's reply (generation stops at <|im_end|>)
"""
from __future__ import annotations

import sys
from pathlib import Path

import click


def render(tokenizer, prompt: str) -> dict:
    """The prompt as one user turn plus the assistant header, by the tokenizer's own chat template.

    The tokenizer saved with a checkpoint is the one prep saved with the shards, so
    this is exactly how training rows began.
    """
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)


def reply_ids(model, tokenizer, prompt: str, max_new_tokens: int = 256, temperature: float = 0.0,
              top_p: float = 1.0, seed: int = 0):
    """Generated token ids after the prompt, up to and including `<|im_end|>` (the eos); greedy at temperature 0."""
    import torch

    encoded = render(tokenizer, prompt)
    torch.manual_seed(seed)
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
    with torch.no_grad():
        output = model.generate(**encoded, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id, **sampling)
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
def main(model_dir: Path, prompt: str, max_new_tokens: int, temperature: float, top_p: float, seed: int) -> None:
    """Print the model's reply to PROMPT (MODEL_DIR: a run's best/ or last/ folder)."""
    if not (model_dir / "config.json").is_file():
        click.echo(f"error: {model_dir} is not a model folder (no config.json); pass a run's best/ folder", err=True)
        sys.exit(1)
    click.echo(generate(model_dir, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                        seed=seed))


if __name__ == "__main__":
    main()
