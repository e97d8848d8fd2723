"""Few-row CPU kernels in C (cpu_kernels.c), built on first use and called through ctypes.

    ember serve --model smollm2-135m-instruct --quantize int8    # one-stream decode runs in these kernels

A one-stream decode step spent more time dispatching small torch ops than moving weights. The kernels:
`int8_linear` (an int8 projection for 1-8 rows, bit-identical to Int8Linear's torch sequence),
`decode_attention` (all decode rows of one layer, read in place from the KV cache), `rms_norm` and `silu_mul`
(the int8 decoder's, in every path) and `ember_int8_decode` (a whole int8 decode step, models/native_decode.py).
Measured in docs/engine.md ("C kernels for few-row steps").

The library is compiled with the machine's C compiler (`cc -O3 -march=native -fopenmp`, about a second) into
the machine's cache folder ($XDG_CACHE_HOME/ember/kernels, else ~/.cache/ember/kernels: a machine artifact
like torch's extension cache, shared by every EMBER_HOME), keyed by the source, the compiler and the CPU's
flags, so a restart does not rebuild it. Without a compiler, after a failed build, or with
EMBER_CPU_KERNELS=0, torch does the work: the same int8 projections, attention within float tolerance.
"""

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch

log = logging.getLogger("ember.kernels")
SOURCE = Path(__file__).with_name("cpu_kernels.c")
# No FMA contraction: the element-wise code (RoPE, residuals) must round like torch's separate ops.
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]


def _cpu_flags() -> str:
    try:
        return next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        return ""


def _build(cc: str, folder: Path) -> Path:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256("\n".join([SOURCE.read_text(), version, " ".join(FLAGS), _cpu_flags()]).encode())
    lib = folder / f"cpu_kernels-{key.hexdigest()[:16]}.so"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = folder.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        # Code is loaded from here: a folder someone else owns or can write to (a shared /tmp) is not trusted.
        raise OSError(f"{folder} is not private to this user")
    if lib.is_file():
        return lib
    log.info("compiling Ember's CPU kernels once for this machine (%s)", lib)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".build-", suffix=".so")
    os.close(fd)
    try:
        subprocess.run([cc, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], check=True, capture_output=True, timeout=120)
        os.replace(tmp, lib)  # atomic: processes building at once each install a whole file
    finally:
        Path(tmp).unlink(missing_ok=True)
    return lib


def cache_folder() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "ember" / "kernels"


@cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (disabled, no compiler, or the build failed: then torch's path is used)."""
    if os.environ.get("EMBER_CPU_KERNELS", "1") == "0":
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        log.info("no C compiler found: decode steps run through torch (slower at a few rows)")
        return None
    # A read-only home or a noexec cache mount: try a private folder under the temporary directory next.
    folders = [cache_folder(), Path(tempfile.gettempdir()) / f"ember-kernels-{os.getuid()}"]
    lib, errors = None, []
    for folder in folders:
        try:
            lib = ctypes.CDLL(str(_build(cc, folder)))
            break
        except (OSError, subprocess.SubprocessError) as e:
            errors.append(f"{folder}: {e}")
    if lib is None:
        log.warning("Ember's CPU kernels could not be built (%s): decode steps run through torch", "; ".join(errors))
        return None
    ptr, i32, f32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    lib.ember_int8_linear.restype = None
    lib.ember_int8_linear.argtypes = [ptr, i32, i32, ptr, ptr, ptr, i32, ptr, ptr, i32]
    lib.ember_decode_attention.restype = None
    lib.ember_decode_attention.argtypes = [ptr] * 5 + [i32] * 5 + [f32, ptr, ptr, i32, i32]
    lib.ember_rms_norm.restype = None
    lib.ember_rms_norm.argtypes = [ptr, ptr, i32, i32, f32, ptr]
    lib.ember_silu_mul.restype = None
    lib.ember_silu_mul.argtypes = [ptr, i32, i32, ptr]
    lib.ember_int8_decode.restype = None
    lib.ember_int8_decode.argtypes = ([ptr, i32, ptr, i32, i32, ptr, ptr, ptr, ptr, i32, i32, i32, i32, ptr, ptr, i32,
                                       i32, f32, f32, ptr, ptr, ptr, i32, i32])
    return lib


@cache
def max_rows() -> int:
    lib = library()
    return lib.ember_max_rows() if lib is not None else 0


def int8_linear(x: torch.Tensor, qn: torch.Tensor, rowsum: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [M, K] fp32 (M <= max_rows()) times the int8 weight qn [N, K] with per-output scales: [M, N] fp32."""
    x = x.contiguous()
    m, k = x.shape
    n = qn.shape[0]
    y = torch.empty(m, n)
    xu = torch.empty(m, k, dtype=torch.uint8)  # the quantised rows (scratch)
    library().ember_int8_linear(x.data_ptr(), m, k, qn.data_ptr(), rowsum.data_ptr(), scale.data_ptr(), n,
                                y.data_ptr(), xu.data_ptr(), torch.get_num_threads())
    return y


def decode_attention(q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, slots: torch.Tensor,
                     lengths: torch.Tensor, scale: float) -> torch.Tensor:
    """q [R, H, D] (one new token per row) against one layer's cache kc/vc [slots, KV, S, D], each row over
    its own slot's first lengths[r] positions: [R, H * D]. Needs library() (callers check)."""
    q = q.contiguous()
    r, h, d = q.shape
    n_slots, kv, s, _ = kc.shape
    slots, lengths = slots.contiguous(), lengths.contiguous()
    lmax = int(lengths.max())
    out = torch.empty(r, h * d)
    scores = torch.empty(r * h, lmax)
    library().ember_decode_attention(q.data_ptr(), kc.data_ptr(), vc.data_ptr(), slots.data_ptr(),
                                     lengths.data_ptr(), r, h, kv, s, d, scale, out.data_ptr(), scores.data_ptr(),
                                     lmax, torch.get_num_threads())
    return out


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """w * (x / sqrt(mean(x^2) + eps)) per row of x [M, D], the sum in order (the int8 decoder's norm)."""
    x = x.contiguous()
    out = torch.empty_like(x)
    library().ember_rms_norm(x.data_ptr(), w.data_ptr(), x.shape[0], x.shape[1], eps, out.data_ptr())
    return out


def silu_mul(gu: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gu [M, 2I] = [gate | up] (the int8 decoder's MLP activation)."""
    gu = gu.contiguous()
    m, i2 = gu.shape
    out = torch.empty(m, i2 // 2)
    library().ember_silu_mul(gu.data_ptr(), m, i2 // 2, out.data_ptr())
    return out


class Int8Layer(ctypes.Structure):
    """cpu_kernels.c's EmberInt8Layer: pointers into one layer's norms and int8 projections."""

    _fields_ = [(name, ctypes.c_void_p) for name in (
        "ln1", "ln2", "wqkv", "wo", "wgu", "wdown", "rqkv", "ro", "rgu", "rdown", "sqkv", "so", "sgu", "sdown")]
