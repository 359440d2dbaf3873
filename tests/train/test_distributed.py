"""Data-parallel training under torchrun: two CPU processes on the gloo backend."""
import json
import subprocess
import sys

import pytest
import torch
import yaml

from kale_fast.train import TrainConfig, train
from tests._helpers import TINY


def test_two_processes_train_identical_replicas(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "out_dir": str(tmp_path), "n_iter": 4}))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "kale_fast.cli", "train", "--config", str(config), "--quiet"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("batch_size 32 per process: 2 processes, a global batch of 64") == 1  # rank 0 says it
    run_dir = tmp_path / "tiny"
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["rounds_done"] == 4
    assert not torch.equal(state["rng"][0][0], state["rng"][1][0])  # each process drew its own batches
    assert "mmd_gebm" in json.loads((run_dir / "summary.json").read_text())
    # the replicas stayed identical (train() checks it) and a resume needs as many processes
    with pytest.raises(ValueError, match=r"written by 2 process\(es\)"):
        train(TrainConfig.from_dict({**TINY, "out_dir": str(tmp_path), "n_iter": 6}), resume=True, progress=False)
