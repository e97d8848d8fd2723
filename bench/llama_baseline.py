"""llama.cpp's server as serve_bench's baseline, on the same weights as Ember's bundled model.

    .venv/bin/python bench/serve_bench.py --baseline llama-server --llama-server ../shared/tools/llama.cpp/llama-server

Ember's smollm2-135m-instruct is the bundled Q4_1 GGUF dequantized to float32; `llama-quantize
--allow-requantize` turns the same file into an F32 GGUF (for Ember fp32) and a Q8_0 GGUF (for Ember
`--quantize int8`), cached under $EMBER_HOME/bench/gguf so later runs skip it. Not part of the package.
"""

import os
import shutil
import subprocess
from pathlib import Path

GGUF_TYPES = {"fp32": "F32", "int8": "Q8_0"}  # Ember precision -> llama.cpp type on the same weights


def find_server(arg: str | None) -> Path | None:
    """--llama-server PATH, else $EMBER_LLAMA_SERVER, else `llama-server` on PATH; None when none exists."""
    for cand in (arg, os.environ.get("EMBER_LLAMA_SERVER"), shutil.which("llama-server")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return Path(cand).resolve()
        if cand and Path(cand).is_dir() and (Path(cand) / "llama-server").is_file():
            return (Path(cand) / "llama-server").resolve()
    return None


def absent_message(arg: str | None) -> str:
    where = arg or os.environ.get("EMBER_LLAMA_SERVER")
    return (f"llama.cpp's llama-server was not found{f' at {where}' if where else ''}: pass --llama-server PATH "
            "or set EMBER_LLAMA_SERVER (a prebuilt one lives in ../shared/tools/llama.cpp/ on the dev machine); "
            "or run with --baseline transformers / --no-baseline")


def bundled_gguf() -> Path:
    from ember.store import importers

    return importers.catalog_path(importers.CATALOG["smollm2-135m-instruct"])


def make_gguf(server: Path, dtype: str, cache_dir: Path) -> Path:
    """The bundled Q4_1 GGUF requantized to dtype's llama.cpp type (cached)."""
    kind = GGUF_TYPES[dtype]
    out = cache_dir / f"smollm2-135m-instruct.{kind}.gguf"
    if out.exists():
        return out
    quantize = server.with_name("llama-quantize")
    if not quantize.exists():
        raise SystemExit(f"{quantize} is missing: it makes the {kind} GGUF from the bundled file")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    r = subprocess.run([str(quantize), "--allow-requantize", str(bundled_gguf()), str(tmp), kind],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"llama-quantize failed ({r.returncode}):\n{r.stderr[-2000:]}")
    tmp.rename(out)
    return out


def start_server(server: Path, gguf: Path, port: int, parallel: int, ctx: int, threads: int,
                 extra: list[str]) -> subprocess.Popen:
    cmd = [str(server), "-m", str(gguf), "-np", str(parallel), "-c", str(ctx), "-t", str(threads),
           "--host", "127.0.0.1", "--port", str(port), "--no-webui", *extra]
    print("starting", " ".join(cmd), flush=True)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
