"""`ember serve`: the OpenAI-compatible HTTP server (see docs/serving.md).

    ember serve                                              # the two bundled models on 127.0.0.1:8000
    ember serve --model smollm2-135m-instruct --model my-model@production --port 9000 --require-key

With no --model it serves smollm2-135m-instruct and minilm-l6-v2, pulling them from the bundled catalog on
the first start. Stop it with Ctrl-C or SIGTERM: in-flight requests get --shutdown-timeout seconds to finish.
"""

import typer


def register(root: typer.Typer) -> None:
    root.command("serve")(serve)


def serve(model: list[str] = typer.Option(None, "--model", "-m", help="Model reference to serve (repeatable): "
                                          "NAME, NAME:N or NAME@ALIAS. Default: the two bundled models."),
          host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
          port: int = typer.Option(8000, "--port", help="Port to listen on."),
          max_slots: int = typer.Option(32, "--max-slots", min=1, help="Sequences generating at once per model."),
          max_queue: int = typer.Option(256, "--max-queue", min=0,
                                        help="Requests waiting for a slot per model; beyond it: 429."),
          max_seq_len: int = typer.Option(2048, "--max-seq-len", min=16, help="Context per sequence (KV cache)."),
          require_key: bool = typer.Option(False, "--require-key",
                                           help="Require an API key even when none exists yet."),
          log_content: bool = typer.Option(False, "--log-content", help="Log prompt and completion text."),
          shutdown_timeout: float = typer.Option(30.0, "--shutdown-timeout",
                                                 help="Seconds in-flight requests get on SIGTERM."),
          max_body_mb: float = typer.Option(4.0, "--max-body-mb", help="Largest request body; beyond it: 413."),
          quantize: str = typer.Option(None, "--quantize", help="Weight quantization for decoders: int8."),
          threads: int = typer.Option(0, "--threads", help="Torch threads (0: the engine's default)."),
          follow_interval: float = typer.Option(1.0, "--follow-interval", min=0,
                                                help="Seconds between checks of the registry's aliases "
                                                     "(a moved alias is hot-swapped); 0: never."),
          keep_alive: str = typer.Option(None, "--keep-alive",
                                         help="Unload a model idle this long (30s, 5m, 1h); it loads again on its "
                                              "next request. Default: keep loaded."),
          max_adapters: int = typer.Option(8, "--max-adapters", min=0,
                                           help="LoRA adapters kept loaded per base model (served unmerged, "
                                                "loaded on first use, least recently used out); 0: none."),
          max_memory: str = typer.Option(None, "--max-memory",
                                         help="Memory budget for loaded models (e.g. 4GB): loading beyond it "
                                              "unloads the least recently used idle model, else is refused.")):
    """Serve models over an OpenAI-compatible HTTP API (completions, chat, embeddings, streaming)."""
    from ember.config import get_settings
    from ember.server.app import ServeConfig, serve as run
    from ember.server.residency import parse_duration, parse_size

    settings = get_settings()
    if threads:
        settings.threads = threads
    cfg = ServeConfig(models=list(model or []), host=host, port=port, max_slots=max_slots, max_queue=max_queue,
                      max_seq_len=max_seq_len, max_body_bytes=int(max_body_mb * 1024 * 1024),
                      require_key=require_key, log_content=log_content, shutdown_timeout=shutdown_timeout,
                      quantize=quantize, follow_interval=follow_interval, settings=settings,
                      keep_alive=parse_duration(keep_alive), max_memory=parse_size(max_memory),
                      max_adapters=max_adapters)
    return run(cfg)
