"""`ember serve`: the OpenAI-compatible HTTP server (see docs/serving.md).

    ember serve                                              # the two bundled models on 127.0.0.1:8000
    ember serve --model smollm2-135m-instruct --model my-model@production --port 9000 --require-key
    ember serve --no-workers                                 # inference only: jobs run on other replicas
    ember serve --backend vllm --model my-model@production   # decoders on vLLM's GPU engine (docs/deploy.md)
    ember serve --model m@production --keep-alive 5m --max-memory 4GB   # follows m's alias; unloads when idle

With no --model it serves smollm2-135m-instruct and minilm-l6-v2, pulling them from the bundled catalog on
the first start. Stop it with Ctrl-C or SIGTERM: in-flight requests get --shutdown-timeout seconds to finish.
Security flags and their defaults (Host/Origin checks, limits, TLS) are described in docs/security.md.
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
          log_content: bool = typer.Option(False, "--log-content",
                                           help="Log prompt and completion text (redacted unless --no-redact)."),
          no_redact: bool = typer.Option(False, "--no-redact", help="With --log-content: log text verbatim."),
          allowed_hosts: str = typer.Option(None, "--allowed-hosts", help="Comma-separated Host names to accept "
                                            "('.example.com' for a domain, '*' for any). Default: loopback names "
                                            "when bound to loopback, else any."),
          allowed_origins: str = typer.Option(None, "--allowed-origins", help="Comma-separated browser origins "
                                              "allowed cross-origin (CORS). Default: none."),
          max_best_of: int = typer.Option(8, "--max-best-of", min=1, help="Largest n, best_of and beam width."),
          max_prompt_chars: int = typer.Option(0, "--max-prompt-chars", min=0,
                                               help="Largest prompt (all messages) in characters "
                                                    "(0: 65536 or 32 per token of --max-seq-len, the larger)."),
          max_messages: int = typer.Option(1024, "--max-messages", min=1, help="Most messages in one chat."),
          default_max_tokens: int = typer.Option(1024, "--default-max-tokens", min=1,
                                                 help="max_tokens of a chat request that sets none."),
          max_queue_per_key: int = typer.Option(None, "--max-queue-per-key", min=1,
                                                help="Waiting requests per API key (default: max-queue/4)."),
          queue_timeout: float = typer.Option(120.0, "--queue-timeout", min=0.1,
                                              help="Seconds a request may wait for a slot; then 429."),
          request_timeout: float = typer.Option(600.0, "--request-timeout", min=0.1,
                                                help="Seconds a generation request may take in all; then 504."),
          max_connections: int = typer.Option(1024, "--max-connections", min=1,
                                              help="Open connections and requests at once; beyond it 503."),
          keep_alive_timeout: float = typer.Option(5.0, "--keep-alive-timeout", min=0.1,
                                                   help="Seconds an idle keep-alive connection stays open."),
          header_timeout: float = typer.Option(10.0, "--header-timeout", min=0.1,
                                               help="Seconds a client has to send a request's headers."),
          body_timeout: float = typer.Option(30.0, "--body-timeout", min=0.1,
                                             help="Seconds a request body may stall between chunks; then 408."),
          ssl_certfile: str = typer.Option(None, "--ssl-certfile", help="TLS certificate (PEM): serve HTTPS."),
          ssl_keyfile: str = typer.Option(None, "--ssl-keyfile", help="TLS private key (PEM)."),
          shutdown_timeout: float = typer.Option(30.0, "--shutdown-timeout",
                                                 help="Seconds in-flight requests get on SIGTERM."),
          max_body_mb: float = typer.Option(4.0, "--max-body-mb", help="Largest request body; beyond it: 413."),
          quantize: str = typer.Option(None, "--quantize", help="Weight quantization for decoders: int8."),
          threads: int = typer.Option(0, "--threads", help="Torch threads (0: the engine's default)."),
          backend: str = typer.Option("ember", "--backend", help="Decoder engine: ember (CPU, default) or vllm "
                                      "(vLLM on a CUDA GPU; needs `pip install vllm`)."),
          speculative: str = typer.Option(None, "--speculative",
                                          help="Speculative decoding: ngram (prompt lookup drafts)."),
          num_speculative_tokens: int = typer.Option(4, "--num-speculative-tokens", min=1, max=16,
                                                     help="Draft tokens verified per step with --speculative."),
          workers: int = typer.Option(1, "--workers", min=0,
                                      help="Jobs (fine-tuning, training, batches) this server runs at once."),
          no_workers: bool = typer.Option(False, "--no-workers",
                                          help="Run no jobs here (a pure inference replica)."),
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
    from ember.engine.backends import BACKENDS, check_available
    from ember.errors import InvalidRequest

    if backend not in BACKENDS:
        raise InvalidRequest(f"--backend must be ember or vllm, not {backend!r}", param="backend")
    if backend == "vllm":
        check_available()  # before anything loads (torch, the app): one clear line and exit 5 without vllm or a GPU

    from ember.config import get_settings
    from ember.server.app import ServeConfig, serve as run
    from ember.server.limits import RequestLimits
    from ember.server.residency import parse_duration, parse_size

    if bool(ssl_certfile) != bool(ssl_keyfile):
        raise InvalidRequest("give both --ssl-certfile and --ssl-keyfile")

    def split(v):
        return [x.strip() for x in v.split(",") if x.strip()] if v else []

    from ember.engine.speculative import SpecConfig

    spec = SpecConfig(speculative, num_tokens=num_speculative_tokens) if speculative else None
    settings = get_settings()
    if threads:
        settings.threads = threads
    cfg = ServeConfig(models=list(model or []), host=host, port=port, max_slots=max_slots, max_queue=max_queue,
                      max_seq_len=max_seq_len, max_body_bytes=int(max_body_mb * 1024 * 1024),
                      require_key=require_key, log_content=log_content, shutdown_timeout=shutdown_timeout,
                      quantize=quantize, speculative=spec, workers=0 if no_workers else workers, settings=settings,
                      redact_content=not no_redact,
                      allowed_hosts=split(allowed_hosts) or None, allowed_origins=split(allowed_origins),
                      max_queue_per_key=max_queue_per_key, max_connections=max_connections,
                      keep_alive_timeout=keep_alive_timeout, header_timeout=header_timeout, body_timeout=body_timeout,
                      limits=RequestLimits(max_best_of=max_best_of,
                                           max_prompt_chars=max_prompt_chars or max(65536, 32 * max_seq_len),
                                           max_messages=max_messages, default_max_tokens=default_max_tokens,
                                           queue_timeout=queue_timeout, request_timeout=request_timeout),
                      ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, backend=backend,
                      follow_interval=follow_interval,
                      keep_alive=parse_duration(keep_alive), max_memory=parse_size(max_memory),
                      max_adapters=max_adapters)
    return run(cfg)
