"""Multi-node training on one machine: `torchrun --nnodes 2 --nproc-per-node 1`, two node ranks over loopback
(each torchrun its own "node", rendezvous on 127.0.0.1), trains the same losses as one process with the same
global batch; rank 0 writes the checkpoints into the shared output folder and registers the model once."""

import json
import os
import socket
import subprocess
import sys

import pytest

from ember.train import checkpoint as ckpt, gpt

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
       "OMP_NUM_THREADS": "1"}


def _losses(out):
    return {r["step"]: r["loss"] for r in ckpt.read_metrics(out / "metrics.jsonl") if "loss" in r}


def test_two_nodes_over_loopback_train_like_one_process(tmp_path, ember_home, tiny_gpt):
    from ember.store import registry

    out = tmp_path / "shared"  # the shared filesystem both nodes write to (NFS / a volume in a real cluster)
    args = tiny_gpt(out, max_steps=4, checkpoint_every=2, register=True, name="tiny-mn")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node",
                               "1", "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port",
                               str(port), "-m", "ember", "train", "gpt", *args],
                              env={**ENV, "EMBER_HOME": str(ember_home)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    logs = [n.communicate(timeout=400)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(x[-3000:] for x in logs)

    single = gpt.main(None, tiny_gpt(tmp_path / "one", max_steps=4))
    a, b = _losses(tmp_path / "one"), _losses(out)
    assert list(a) == list(b) == [1, 2, 3, 4]
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-5)
    result = json.loads((out / "result.json").read_text())
    assert result["final_val_loss"] == pytest.approx(single["final_val_loss"], rel=1e-5)
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-00000002", "step-00000004"]
    versions = registry.list_versions("tiny-mn")
    assert len(versions) == 1
