"""`ember finetune sft|classify|tag` and `ember models merge`: fine-tuning from the command line.

    ember finetune sft --base smollm2-135m-instruct --data train.jsonl --method lora --rank 8 --name my-sft
    ember finetune classify --base minilm-l6-v2 --data labeled.jsonl --name my-clf
    ember finetune tag --base minilm-l6-v2 --data train.conll --name my-ner
    ember models merge my-sft:1 --name my-sft-merged
    torchrun --nproc-per-node 2 -m ember finetune classify --base minilm-l6-v2 --data labeled.jsonl --name c

Data is validated (bad lines reported with their line numbers) before any model is loaded. Each command
prints the registered reference; --json prints the whole summary (losses, run folder, reference).
"""

from pathlib import Path

import typer

from ember.cli.models import app as models_app
from ember.cli.output import console, print_json

app = typer.Typer(no_args_is_help=True, help="Fine-tune models: chat/instruction SFT (LoRA or full), "
                                             "text classification, token tagging (NER, POS).")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="finetune")


# Options every task shares; typer needs them spelled out per command.
BASE = typer.Option(..., "--base", help="Registry reference of the model to start from.")
DATA = typer.Option(..., "--data", help="Training data file.")
EVAL = typer.Option(None, "--eval-data", help="Held-out file in the same format (gives the final eval loss).")
NAME = typer.Option(..., "--name", help="Registry name of the result (each run adds a version).")
OUT = typer.Option(None, "--out", help="Run folder for checkpoints and metrics [default: EMBER_HOME/runs/NAME].")
EPOCHS = typer.Option(3.0, "--epochs", help="Passes over the training data.")
STEPS = typer.Option(0, "--max-steps", help="Optimizer steps; 0 derives them from --epochs.")
BATCH = typer.Option(8, "--batch-size", help="Examples per optimizer step (over all processes).")
ACCUM = typer.Option(1, "--grad-accum", help="Micro-batches per optimizer step.")
WARMUP = typer.Option(0, "--warmup-steps")
EVAL_EVERY = typer.Option(0, "--eval-every", help="Steps between evaluations; 0: only at the end.")
CKPT_EVERY = typer.Option(0, "--checkpoint-every", help="Steps between checkpoints; 0: only at the end.")
SEED = typer.Option(0, "--seed")
RESUME = typer.Option(False, "--resume", help="Continue from the run folder's latest checkpoint.")
NO_PROGRESS = typer.Option(False, "--no-progress", help="No progress bar.")
JSON = typer.Option(False, "--json", help="Print the summary as JSON.")


def _config(**kw):
    from ember.finetune.common import FinetuneConfig

    kw["progress"] = not kw.pop("no_progress")
    return FinetuneConfig(**{k: str(v) if isinstance(v, Path) else v for k, v in kw.items()})


def _finish(summary: dict, as_json: bool) -> None:
    if as_json:
        print_json(summary)
        return
    loss = summary.get("final_eval_loss")
    extra = f", eval loss {loss:.4f}" if loss is not None else ""
    console.print(f"registered [bold]{summary['ref']}[/bold] after {summary['steps']} steps "
                  f"(train loss {summary['final_train_loss']:.4f}{extra}); run folder {summary['folder']}")


def _echo(msg: str) -> None:
    console.print(msg, markup=False, highlight=False)


@app.command()
def sft(base: str = BASE, data: Path = DATA, eval_data: Path = EVAL, name: str = NAME, out: Path = OUT,
        method: str = typer.Option("lora", "--method", help="lora (an adapter version) or full."),
        rank: int = typer.Option(8, "--rank", help="LoRA rank."),
        alpha: int = typer.Option(16, "--alpha", help="LoRA alpha (scale = alpha / rank)."),
        dropout: float = typer.Option(0.05, "--dropout", help="LoRA dropout."),
        target_modules: str = typer.Option("all-linear", "--target-modules",
                                           help="all-linear, or comma-separated module names (q_proj,v_proj)."),
        epochs: float = EPOCHS, max_steps: int = STEPS, batch_size: int = BATCH, grad_accum: int = ACCUM,
        lr: float = typer.Option(2e-4, "--lr"), warmup_steps: int = WARMUP,
        max_length: int = typer.Option(1024, "--max-length", help="Tokens per example; longer are cut."),
        eval_every: int = EVAL_EVERY, checkpoint_every: int = CKPT_EVERY, seed: int = SEED,
        resume: bool = RESUME, fsdp: bool = typer.Option(False, "--fsdp", help="FSDP2 (with --method full)."),
        no_progress: bool = NO_PROGRESS, as_json: bool = JSON):
    """Chat / instruction fine-tuning (OpenAI chat, prompt/completion or Alpaca JSONL)."""
    from ember.finetune import sft as task

    cfg = _config(**{k: v for k, v in locals().items() if k not in ("as_json", "task")})
    _finish(task.run(cfg, echo=_echo), as_json)


@app.command()
def classify(base: str = BASE, data: Path = DATA, eval_data: Path = EVAL, name: str = NAME, out: Path = OUT,
             epochs: float = EPOCHS, max_steps: int = STEPS, batch_size: int = typer.Option(16, "--batch-size"),
             grad_accum: int = ACCUM, lr: float = typer.Option(5e-5, "--lr"), warmup_steps: int = WARMUP,
             max_length: int = typer.Option(256, "--max-length"), eval_every: int = EVAL_EVERY,
             checkpoint_every: int = CKPT_EVERY, seed: int = SEED, resume: bool = RESUME,
             no_progress: bool = NO_PROGRESS, as_json: bool = JSON):
    """Sequence classification from {"text", "label"} JSONL."""
    from ember.finetune import classify as task

    cfg = _config(**{k: v for k, v in locals().items() if k not in ("as_json", "task")})
    _finish(task.run(cfg, echo=_echo), as_json)


@app.command()
def tag(base: str = BASE, data: Path = DATA, eval_data: Path = EVAL, name: str = NAME, out: Path = OUT,
        epochs: float = EPOCHS, max_steps: int = STEPS, batch_size: int = typer.Option(16, "--batch-size"),
        grad_accum: int = ACCUM, lr: float = typer.Option(5e-5, "--lr"), warmup_steps: int = WARMUP,
        max_length: int = typer.Option(256, "--max-length"), eval_every: int = EVAL_EVERY,
        checkpoint_every: int = CKPT_EVERY, seed: int = SEED, resume: bool = RESUME,
        no_progress: bool = NO_PROGRESS, as_json: bool = JSON):
    """Token tagging (NER with BIO tags, or POS) from a CoNLL file (WORD ... TAG, blank line between sentences)."""
    from ember.finetune import tag as task

    cfg = _config(**{k: v for k, v in locals().items() if k not in ("as_json", "task")})
    _finish(task.run(cfg, echo=_echo), as_json)


@models_app.command("merge")
def merge(ref: str = typer.Argument(..., help="An adapter version (kind 'adapter')."),
          name: str = typer.Option(..., "--name", help="Registry name of the merged model."),
          as_json: bool = JSON):
    """Merge a LoRA adapter into its base model: a full model version whose parent is the adapter."""
    from ember.store import adapters

    v = adapters.merge(ref, name)
    if as_json:
        return print_json(v.to_dict())
    console.print(f"merged {ref} into [bold]{v.ref}[/bold] (parent {v.parent})")
