"""`ember tokenizer train`, `ember data prepare`, `ember train gpt|bert`: training from scratch.

    ember tokenizer train corpus/*.py --type bpe --vocab-size 2048 --name stdlib-bpe
    ember data prepare corpus/*.py --tokenizer stdlib-bpe --out data/stdlib
    ember train gpt --config configs/gpt-tiny.yaml max_steps=200 out=runs/gpt1
    torchrun --nproc-per-node 2 -m ember train gpt --config configs/gpt-tiny.yaml --fsdp
    ember train bert --config configs/bert-tiny.yaml --resume
"""

from __future__ import annotations

from pathlib import Path

import typer

from ember.cli.output import console, print_json

tokenizer_app = typer.Typer(no_args_is_help=True, help="Train tokenizers (stored in the registry).")
data_app = typer.Typer(no_args_is_help=True, help="Prepare tokenized datasets for training.")
train_app = typer.Typer(no_args_is_help=True, help="Pretrain models from scratch (GPT, BERT).")

CONFIG = typer.Option(None, "--config", "-c", help="YAML config (see configs/).")
RESUME = typer.Option(False, "--resume", help="Continue from the last checkpoint in `out`.")
FSDP = typer.Option(False, "--fsdp", help="Shard with FSDP2 under torchrun (default: DDP).")
OVERRIDES = typer.Argument(None, help="key=value overrides of config keys, e.g. max_steps=100 lr=1e-3")
JSON = typer.Option(False, "--json", help="Print the result as JSON.")


def register(root: typer.Typer) -> None:
    root.add_typer(tokenizer_app, name="tokenizer")
    root.add_typer(data_app, name="data")
    root.add_typer(train_app, name="train")


@tokenizer_app.command("train")
def tokenizer_train(files: list[Path] = typer.Argument(..., help="Text or JSONL (`text` field) files."),
                    type: str = typer.Option("bpe", "--type", help="bpe (GPT) or wordpiece (BERT)."),
                    vocab_size: int = typer.Option(8192, "--vocab-size"),
                    name: str = typer.Option(..., "--name", help="Registry name of the tokenizer."),
                    as_json: bool = JSON):
    """Train a byte-level BPE or WordPiece tokenizer and register it as NAME:N."""
    from ember.train.tokenizer import train_and_register

    v = train_and_register(files, type, vocab_size, name)
    if as_json:
        print_json(v.to_dict())
    else:
        console.print(f"registered tokenizer [bold]{v.ref}[/] ({v.metadata['tokenizer']['vocab_size']} tokens)")


@data_app.command("prepare")
def data_prepare(files: list[Path] = typer.Argument(..., help="Text or JSONL (`text` field) files."),
                 tokenizer: str = typer.Option(..., "--tokenizer", help="Registry ref or tokenizer folder."),
                 out: Path = typer.Option(..., "--out", help="Output folder for shards + manifest."),
                 val_every: int = typer.Option(10, "--val-every", help="Every Nth chunk goes to validation."),
                 as_json: bool = JSON):
    """Tokenize FILES into memory-mapped train/val shards with a manifest."""
    from ember.train.data import prepare
    from ember.train.tokenizer import load_tokenizer

    tok, ref = load_tokenizer(tokenizer)
    m = prepare(files, tok, out, tokenizer_ref=ref, val_every=val_every)
    if as_json:
        print_json(m)
    else:
        sp = m["splits"]
        console.print(f"prepared {out}: train {sp['train']['tokens']:,} tokens, val {sp['val']['tokens']:,} "
                      f"tokens, digest {m['digest'][:12]}")


def _flags(overrides: list[str] | None, resume: bool, fsdp: bool) -> list[str]:
    items = list(overrides or [])
    if resume:
        items.append("resume=true")
    if fsdp:
        items.append("fsdp=true")
    return items


def _report(summary: dict, as_json: bool):
    if summary.get("rank", 0) != 0:  # under torchrun only rank 0 reports
        return
    if as_json:
        print_json(summary)
        return
    val = summary.get("final_val_loss")
    line = f"done: step {summary['step']}"
    if val is not None:
        line += f", val_loss {val:.4f} (ppl {summary['final_val_ppl']:.2f})"
    line += f", model {summary['ref'] or summary['folder']}"
    console.print(line)


@train_app.command("gpt")
def train_gpt(overrides: list[str] = OVERRIDES, config: Path = CONFIG, resume: bool = RESUME,
              fsdp: bool = FSDP, as_json: bool = JSON):
    """Pretrain a causal LM (Llama- or GPT-2-style) on prepared data."""
    from ember.train import gpt

    _report(gpt.main(str(config) if config else None, _flags(overrides, resume, fsdp)), as_json)


@train_app.command("bert")
def train_bert(overrides: list[str] = OVERRIDES, config: Path = CONFIG, resume: bool = RESUME,
               fsdp: bool = FSDP, as_json: bool = JSON):
    """Pretrain BertForPreTraining (masked LM + next sentence prediction) on prepared data."""
    from ember.train import bert

    _report(bert.main(str(config) if config else None, _flags(overrides, resume, fsdp)), as_json)
