"""What each kind of job is: how its request is checked (before it is queued) and how it runs (in the child).

    curl -X POST localhost:8000/v1/fine_tuning/jobs -d '{"model": "smollm2-135m-instruct", "training_file": "file-..."}'
    curl -X POST localhost:8000/api/jobs -d '{"kind": "train-gpt", "config": {...}}'

Kinds: fine-tune (sft, classification, tagging), tokenizer, data (prepare shards), train-gpt, train-bert,
eval, batch. `check(kind, spec, owner)` raises InvalidRequest/NotFound (400/404) so that a job that cannot
run is never queued (a missing training file is a 400 at once). `run(job, ctx)` executes in the job's child
process (`python -m ember.jobs.run JOB_ID`) and returns the result dict stored with the job. Every kind but
tokenizer, data and eval resumes from its run folder after its worker was lost (training from the last
checkpoint, batches after the last written line).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ember.errors import InvalidRequest, NotFound

RESUMABLE = {"fine-tune", "train-gpt", "train-bert", "batch"}
ADMIN_KINDS = ("tokenizer", "data", "train-gpt", "train-bert", "eval")
FT_METHODS = ("supervised", "classification", "tagging")
FT_FORMATS = {"supervised": ("chat", "completion", "alpaca"), "classification": ("classify",),
              "tagging": ("conll",)}
FT_BASE_LR = {"supervised": 2e-4, "classification": 5e-5, "tagging": 5e-5}


@dataclass
class Context:
    job: dict
    folder: Path                      # EMBER_HOME/jobs/<id>: inputs, run/ (checkpoints, metrics.jsonl), log
    settings: object
    event: Callable[[str], None]      # appends a message event
    resume: bool                      # a previous attempt's worker was lost: continue from its run folder

    @property
    def run_dir(self) -> Path:
        return self.folder / "run"


def _file(file_id, owner, purposes: tuple[str, ...], param: str, settings) -> dict:
    from ember.store import files

    if not isinstance(file_id, str) or not file_id:
        raise InvalidRequest(f"'{param}' must be a file id (upload it with POST /v1/files)", param=param)
    try:
        f = files.get(file_id, owner, settings)
    except NotFound:
        raise InvalidRequest(f"{param}: no file with id {file_id!r}", param=param, code="file_not_found") from None
    if f["purpose"] not in purposes:
        raise InvalidRequest(f"{param}: file {file_id} has purpose {f['purpose']!r}, expected "
                             f"{' or '.join(purposes)}", param=param)
    return f


def _model(ref, param: str, settings) -> str:
    from ember.store import registry

    if not isinstance(ref, str) or not ref:
        raise InvalidRequest(f"'{param}' is required", param=param)
    try:
        return registry.resolve(ref, settings).ref
    except NotFound as e:
        raise InvalidRequest(e.message, param=param, code="model_not_found") from None


def _auto(value, default, cast, name: str):
    if value in (None, "auto"):
        return default
    try:
        v = cast(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"hyperparameters.{name} must be a number or 'auto'", param=name) from None
    if v <= 0:
        raise InvalidRequest(f"hyperparameters.{name} must be positive", param=name)
    return v


def finetune_config(spec: dict, ctx: Context | None = None, settings=None):
    """The FinetuneConfig a fine-tuning request asks for (checked here, before the job is queued)."""
    from ember.finetune.common import FinetuneConfig
    from ember.store.registry import check_name

    method = spec.get("method_type", "supervised")
    hp = spec.get("hyperparameters") or {}
    ex = spec.get("ember") or {}
    unknown = set(ex) - {"training", "lora_rank", "lora_alpha", "max_steps", "checkpoint_every", "max_length",
                         "seed", "eval_every"}
    if unknown:
        raise InvalidRequest(f"ember: unknown field(s) {', '.join(sorted(unknown))}", param="ember")
    training = ex.get("training", "lora" if method == "supervised" else "full")
    if method != "supervised" and training != "full":
        raise InvalidRequest(f"ember.training: {method} trains every weight ('full')", param="ember.training")
    lines = int(spec.get("training_lines") or 8)
    batch = int(_auto(hp.get("batch_size"), max(1, min(8, lines)), int, "batch_size"))
    name = spec["output_name"]
    check_name(name)
    folder = ctx.folder if ctx else Path("/nonexistent")
    cfg = FinetuneConfig(
        base=spec["model"], data=str(folder / "training.jsonl"), name=name,
        eval_data=str(folder / "validation.jsonl") if spec.get("validation_file") else None,
        out=str(folder / "run"), epochs=float(_auto(hp.get("n_epochs"), 3, float, "n_epochs")),
        max_steps=int(ex.get("max_steps", 0)), batch_size=batch,
        lr=FT_BASE_LR[method] * float(_auto(hp.get("learning_rate_multiplier"), 1.0, float,
                                            "learning_rate_multiplier")),
        seed=int(spec.get("seed") or ex.get("seed") or 0), eval_every=int(ex.get("eval_every", 0)),
        checkpoint_every=int(ex.get("checkpoint_every", 0)), resume=bool(ctx and ctx.resume), progress=False,
        method=training, rank=int(ex.get("lora_rank", 8)), alpha=int(ex.get("lora_alpha", 16)),
        max_length=int(ex.get("max_length", 1024 if method == "supervised" else 256)))
    return cfg.check()


def check(kind: str, spec: dict, owner: str, settings=None) -> dict:
    """Validate a job request; returns the spec to store (references resolved). Raises 400/404 errors."""
    if kind == "fine-tune":
        method = spec.get("method_type", "supervised")
        if method not in FT_METHODS:
            raise InvalidRequest(f"method.type must be one of {', '.join(FT_METHODS)}", param="method")
        spec["model"] = _model(spec.get("model"), "model", settings)
        tf = _file(spec.get("training_file"), owner, ("fine-tune",), "training_file", settings)
        if spec.get("validation_file"):
            _file(spec["validation_file"], owner, ("fine-tune",), "validation_file", settings)
        spec["training_lines"] = (tf.get("metadata") or {}).get("lines")
        fmt = (tf.get("metadata") or {}).get("format")
        if fmt and fmt not in FT_FORMATS[method]:
            raise InvalidRequest(f"training_file {tf['id']} is {fmt} data; method.type {method} takes "
                                 f"{' or '.join(FT_FORMATS[method])} files", param="training_file")
        finetune_config(spec, None, settings)
    elif kind in ("train-gpt", "train-bert"):
        cfg = spec.get("config")
        if not isinstance(cfg, dict):
            raise InvalidRequest("'config' must be an object (the keys of a configs/*.yaml file)", param="config")
        data = cfg.get("data")
        if not (isinstance(data, str) and data.startswith("job-")):
            raise InvalidRequest("config.data must name a finished data job (job-...)", param="config.data")
        _data_job(data, settings)
        for key in ("out", "resume"):
            if key in cfg:
                raise InvalidRequest(f"config.{key} is set by the job (its run folder)", param=f"config.{key}")
        from ember.train import bert, gpt
        from ember.train.config import load_config

        module = gpt if kind == "train-gpt" else bert
        config_cls = next(v for k, v in vars(module).items() if k.endswith("Config") and isinstance(v, type)
                          and v.__module__ == module.__name__)
        load_config(config_cls, None, [f"{k}={_yaml_value(v)}" for k, v in cfg.items()
                                       if k not in ("data",)] + ["data=/nonexistent", "out=/nonexistent"])
    elif kind == "tokenizer":
        for f in spec.get("files") or [None]:
            _file(f, owner, ("train",), "files", settings)
        if spec.get("type", "bpe") not in ("bpe", "wordpiece"):
            raise InvalidRequest("type must be bpe or wordpiece", param="type")
        from ember.store.registry import check_name

        check_name(spec.get("name") or "", "name")
    elif kind == "data":
        for f in spec.get("files") or [None]:
            _file(f, owner, ("train",), "files", settings)
        spec["tokenizer"] = _model(spec.get("tokenizer"), "tokenizer", settings)
    elif kind == "eval":
        spec["model"] = _model(spec.get("model"), "model", settings)
        task = spec.get("task")
        if isinstance(task, str) and task.startswith("builtin:"):
            from ember.evaluate.tasks import resolve_spec

            resolve_spec(task)
        else:
            _file(task, owner, ("evals",), "task", settings)
            _file(spec.get("data_file"), owner, ("evals",), "data_file", settings)
    elif kind == "batch":
        meta = _file(spec.get("input_file_id"), owner, ("batch",), "input_file_id", settings)["metadata"] or {}
        wrong = [u for u in meta.get("urls", []) if u != spec.get("endpoint")]
        if wrong:
            raise InvalidRequest(f"every line's url must be the batch's endpoint {spec.get('endpoint')}; the "
                                 f"file has {', '.join(wrong)}", param="endpoint")
        spec["lines"] = meta.get("lines")
    else:
        raise InvalidRequest(f"unknown job kind {kind!r}", param="kind")
    return spec


def _yaml_value(v) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


def _data_job(job_id: str, settings) -> dict:
    from ember.store import jobs

    try:
        j = jobs.get(job_id, None, settings)
    except NotFound:
        raise InvalidRequest(f"config.data: no job {job_id!r}", param="config.data") from None
    if j["kind"] != "data" or j["state"] != "succeeded":
        raise InvalidRequest(f"config.data: job {job_id} is not a succeeded data job", param="config.data")
    return j


# ----- running (in the child process) -----

def run(job: dict, ctx: Context) -> dict:
    return RUNNERS[job["kind"]](job["spec"], ctx)


def _copy(file_id: str, dest: Path, settings) -> Path:
    from ember.store import files

    return files.copy_to(file_id, dest, None, settings)


def _fine_tune(spec: dict, ctx: Context) -> dict:
    _copy(spec["training_file"], ctx.folder / "training.jsonl", ctx.settings)
    if spec.get("validation_file"):
        _copy(spec["validation_file"], ctx.folder / "validation.jsonl", ctx.settings)
    method = spec.get("method_type", "supervised")
    if method == "tagging":
        # CoNLL files are uploaded as they are; the tagger reads them by path.
        (ctx.folder / "training.jsonl").rename(ctx.folder / "training.conll")
    cfg = finetune_config(spec, ctx, ctx.settings)
    if method == "tagging":
        cfg.data = str(ctx.folder / "training.conll")
        if cfg.eval_data:
            (ctx.folder / "validation.jsonl").rename(ctx.folder / "validation.conll")
            cfg.eval_data = str(ctx.folder / "validation.conll")
    from ember.finetune import classify, sft, tag

    task = {"supervised": sft, "classification": classify, "tagging": tag}[method]
    summary = task.run(cfg, echo=ctx.event)
    return {"fine_tuned_model": summary["ref"], "summary": summary}


def _train(kind: str):
    def runner(spec: dict, ctx: Context) -> dict:
        from ember.train import bert, gpt

        cfg = dict(spec["config"])
        cfg["data"] = _data_job(cfg["data"], ctx.settings)["result"]["out"]
        overrides = [f"{k}={_yaml_value(v)}" for k, v in cfg.items()] + [f"out={ctx.run_dir}"]
        if ctx.resume:
            overrides.append("resume=true")
        cfg_path = ctx.folder / "config.yaml"
        cfg_path.write_text("{}\n")
        summary = (gpt if kind == "train-gpt" else bert).main(str(cfg_path), overrides)
        return {"model": summary.get("ref"), "summary": summary}
    return runner


def _input_files(spec: dict, ctx: Context) -> list[Path]:
    out = []
    for i, fid in enumerate(spec["files"]):
        from ember.store import files

        name = Path(files.get(fid, None, ctx.settings)["filename"]).name or f"input-{i}"
        out.append(_copy(fid, ctx.folder / "inputs" / f"{i}-{name}", ctx.settings))
    return out


def _tokenizer(spec: dict, ctx: Context) -> dict:
    from ember.train.tokenizer import train_and_register

    v = train_and_register(_input_files(spec, ctx), spec.get("type", "bpe"), int(spec.get("vocab_size", 8192)),
                           spec["name"], ctx.settings)
    return {"model": v.ref}


def _data(spec: dict, ctx: Context) -> dict:
    from ember.train.data import prepare
    from ember.train.tokenizer import load_tokenizer

    tok, ref = load_tokenizer(spec["tokenizer"], ctx.settings)
    out = ctx.folder / "data"
    m = prepare(_input_files(spec, ctx), tok, out, tokenizer_ref=ref, val_every=int(spec.get("val_every", 10)))
    return {"out": str(out), "digest": m.get("digest"), "splits": m.get("splits")}


def _eval(spec: dict, ctx: Context) -> dict:
    import yaml

    from ember.evaluate import runner
    from ember.evaluate.tasks import load_task

    task = spec["task"]
    if not task.startswith("builtin:"):
        task_path = _copy(task, ctx.folder / "task.yaml", ctx.settings)
        doc = yaml.safe_load(task_path.read_text()) or {}
        data_name = Path(str(doc.get("data") or "data.jsonl")).name  # the data sits next to the YAML
        _copy(spec["data_file"], ctx.folder / data_name, ctx.settings)
        doc["data"] = data_name
        task_path.write_text(yaml.safe_dump(doc))
        task = str(task_path)
    return {"eval_run": runner.run(spec["model"], load_task(task), settings=ctx.settings,
                                   limit=spec.get("limit"))}


RUNNERS = {"fine-tune": _fine_tune, "train-gpt": _train("train-gpt"), "train-bert": _train("train-bert"),
           "tokenizer": _tokenizer, "data": _data, "eval": _eval}
# The child's module per kind: a batch runs through the server app, which lives above this layer.
CHILD_MODULE = {"batch": "ember.server.batch_runner"}
