"""Supervised fine-tuning (chat / instruction) of a causal LM, with LoRA (PEFT) or all weights.

    ember finetune sft --base smollm2-135m-instruct --data train.jsonl --eval-data val.jsonl \
        --method lora --rank 8 --alpha 16 --epochs 3 --lr 2e-4 --name my-sft
    torchrun --nproc-per-node 2 -m ember finetune sft --base smollm2-135m-instruct --data train.jsonl --name s

Each record (chat, prompt/completion or Alpaca; see formats.py) is rendered with the base model's own chat
template, and the loss covers only the assistant (completion) tokens: everything else is labelled -100.
LoRA results are registered as kind `adapter` (adapter_config.json + adapter_model.safetensors) whose
parent is the base version; `--method full` results are full model versions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F

from ember.errors import InvalidRequest, Unsupported
from ember.finetune import common, formats
from ember.train import checkpoint as ckpt, distributed
from ember.train.loop import train

IGNORE = -100


def _render(tokenizer, messages: list[dict], *, generation_prompt: bool = False) -> str:
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    return tokenizer.apply_chat_template(clean, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of the assistant turns that carry loss.

    A turn's span runs from the end of the prompt rendered up to it (with the generation prompt) to the end
    of the conversation rendered through it, so it includes the template's end-of-turn token: the model
    learns to stop. Templates where a prefix of the conversation does not render to a prefix of the text
    (some drop earlier reasoning) cannot be masked this way and are refused rather than mis-masked.
    """
    if not getattr(tokenizer, "chat_template", None):
        # No template: plain concatenation; each assistant turn ends with EOS so generation stops.
        text, spans = "", []
        eos = tokenizer.eos_token or ""
        for m in messages:
            if m["role"] == "assistant":
                start = len(text)
                text += m["content"] + eos
                if m.get("weight", 1):
                    spans.append((start, len(text)))
                text += "\n"
            else:
                text += m["content"] + "\n"
        return text, spans
    full = _render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or not m.get("weight", 1):
            continue
        prompt = _render(tokenizer, messages[:i], generation_prompt=True)
        through = _render(tokenizer, messages[:i + 1])
        if not (through.startswith(prompt) and full.startswith(through)):
            raise Unsupported("the base model's chat template does not render conversations incrementally; "
                              "cannot tell assistant tokens apart (use prompt/completion data with a model "
                              "without this template)")
        spans.append((len(prompt), len(through)))
    return full, spans


def encode(tokenizer, messages: list[dict], max_length: int) -> dict | None:
    """input_ids + labels (the token id on assistant tokens, -100 elsewhere); None if nothing to learn."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"][:max_length], enc["offset_mapping"][:max_length]
    labels = [t if any(a <= start < b for a, b in spans) else IGNORE for t, (start, _) in zip(ids, offsets)]
    if all(x == IGNORE for x in labels[1:]):  # label 0 is never predicted (nothing precedes it)
        return None
    return {"input_ids": ids, "labels": labels}


def load_examples(data: formats.DataFile, tokenizer, max_length: int, *, echo=print) -> list[dict]:
    """Encode a validated file; bad lines and over-long examples are reported before training."""
    examples = []
    for rec, line in zip(data.records, data.lines):
        ex = encode(tokenizer, rec["messages"], max_length)
        if ex is None:
            data.bad.append((line, f"no assistant tokens within --max-length {max_length}"))
        else:
            examples.append(ex)
    if not examples:
        raise InvalidRequest(f"{data.path}: no usable examples:\n{data.report()}", param="data")
    if data.bad:
        echo(f"warning: skipped {len(data.bad)} bad line(s) of {data.path.name}:\n{data.report()}")
    return examples


def causal_lm_loss(model, batch: dict):
    """Mean cross-entropy over the labelled (assistant) tokens only."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shift_logits = logits[:, :-1].reshape(-1, logits.size(-1)).float()
    shift_labels = batch["labels"][:, 1:].reshape(-1)
    loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE)
    return loss, {}


def add_lora(model, cfg: common.FinetuneConfig):
    from peft import LoraConfig, get_peft_model

    targets = cfg.target_modules if cfg.target_modules == "all-linear" else \
        [t.strip() for t in cfg.target_modules.split(",") if t.strip()]
    if not targets:
        raise InvalidRequest("--target-modules is empty", param="target_modules")
    conf = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                      task_type="CAUSAL_LM", bias="none")
    try:
        return get_peft_model(model, conf)
    except ValueError as e:  # PEFT names the target modules it could not find
        raise InvalidRequest(f"--target-modules: {e}", param="target_modules") from None


def save_adapter(model, folder: Path, base_ref: str) -> None:
    """PEFT's adapter_config.json + adapter_model.safetensors, naming the base by its registry reference."""
    peft_model = distributed.unwrap(model)
    peft_model.save_pretrained(str(folder), safe_serialization=True)
    cfg_path = folder / "adapter_config.json"
    conf = json.loads(cfg_path.read_text())
    conf["base_model_name_or_path"] = base_ref  # not a local path: the registry knows where the base is
    cfg_path.write_text(json.dumps(conf, indent=2, sort_keys=True))


def run(cfg: common.FinetuneConfig, *, echo=print) -> dict:
    """Fine-tune per `cfg` (inside or outside torchrun); returns a summary (ref, losses, run folder)."""
    cfg.check()
    if cfg.method == "lora" and cfg.fsdp:
        raise InvalidRequest("--fsdp is for --method full; LoRA trains few weights, plain DDP suits it",
                             param="fsdp")

    def body(info) -> dict:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # The data files are checked first: a bad file fails in a second, before any model is read.
        train_data = formats.read_jsonl(cfg.data, "sft")
        eval_file = formats.read_jsonl(cfg.eval_data, "sft") if cfg.eval_data else None
        folder, base = common.base_folder(cfg.base)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        say = echo if info.is_main else (lambda *_: None)
        examples = load_examples(train_data, tokenizer, cfg.max_length, echo=say)
        digests = {"train": train_data.digest}
        eval_examples = []
        if eval_file is not None:
            eval_examples = load_examples(eval_file, tokenizer, cfg.max_length, echo=say)
            digests["eval"] = eval_file.digest
        steps = common.plan_steps(cfg, len(examples), info.world_size)
        torch.manual_seed(cfg.seed)  # identical LoRA initialisation on every rank
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        if cfg.method == "lora":
            model = add_lora(model, cfg)
        model = distributed.wrap(model, info, fsdp=cfg.fsdp)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        collate = common.pad_collate(pad if pad is not None else 0)
        micro = cfg.batch_size // cfg.grad_accum
        batches = common.ExampleBatches(examples, micro, collate, cfg.seed, info.rank, info.world_size)
        say(f"sft ({cfg.method}) of {base.ref}: {len(examples)} examples ({train_data.format} format), "
            f"{steps} steps of {cfg.batch_size}")
        result = train(model, batches, causal_lm_loss, common.loop_settings(cfg, steps),
                       val_batches=common.val_batches_fn(eval_examples, micro, collate, info),
                       tokens_of=common.tokens_of, extra_state={"task": "sft", "base": base.ref})
        out = cfg.run_dir() / "final"
        if info.is_main:
            shutil.rmtree(out, ignore_errors=True)
        if cfg.method == "lora":
            if info.is_main:
                out.mkdir(parents=True)
                save_adapter(model, out, base.ref)
            distributed.barrier()
        else:
            ckpt.save_hf(model, out, info, tokenizer=tokenizer)
            if info.is_main and (folder / "generation_config.json").exists():
                shutil.copy(folder / "generation_config.json", out / "generation_config.json")
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        lin = common.lineage(cfg, "sft", base.ref, digests, result, method=cfg.method,
                             data_format=train_data.format, examples=len(examples),
                             skipped_lines=[n for n, _ in train_data.bad], trainable_parameters=trainable)
        # model_type lets the server see an adapter as a decoder it can serve (merged at load).
        meta = {"task": "text-generation", "architecture": base.metadata.get("architecture"),
                "model_type": base.metadata.get("model_type")}
        if cfg.method == "lora":
            meta |= {"peft_type": "LORA", "rank": cfg.rank, "alpha": cfg.alpha}
        ref = common.register(cfg, out, kind="adapter" if cfg.method == "lora" else "model",
                              base_ref=base.ref, lineage=lin, metadata=meta)
        summary = {"ref": ref, "kind": "adapter" if cfg.method == "lora" else "model", "base": base.ref,
                   "steps": result.step, "final_train_loss": result.loss, "final_eval_loss": result.val_loss,
                   "folder": str(out), "examples": len(examples), "skipped_lines": len(train_data.bad)}
        if info.is_main:
            (cfg.run_dir() / "result.json").write_text(json.dumps(summary, indent=2))
        return summary

    return common.run_distributed(body)
