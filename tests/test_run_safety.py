"""Nothing lost, nothing executed: every file kale_fast loads is read without running code from it, and a run
folder has one writer at a time, survives kills and interrupts, and restarts a run that never checkpointed."""
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from kale_fast.cli import main
from kale_fast.data.images import load_cifar10
from kale_fast.train import TrainConfig, load_run, train
from kale_fast.train.run_folder import RunFolderLock

TINY = dict(name="tiny", dataset="8gaussians", n_train=256, n_test=64, hidden=8, depth=1, n_iter=4,
            n_iter_d_init=1, n_iter_d=1, batch_size=16, n_eval=32, sampler_steps=2, log_every=2, checkpoint_every=2,
            n_partition_samples=16)


def _config(tmp_path, **changes):
    return TrainConfig.from_dict({**TINY, "out_dir": str(tmp_path), **changes})


class _Payload:
    """Unpickling it creates the file `marker` (what an attacker's code could do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _payload_bytes_work(payload_bytes, marker):
    """The payload is live: plain pickle.loads runs it (else the tests below could not fail)."""
    pickle.loads(payload_bytes)
    assert marker.exists()
    marker.unlink()


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "marker"
    _payload_bytes_work(pickle.dumps(_Payload(path)), path)
    yield path
    assert not path.exists(), "loading the crafted file ran its code"


@pytest.fixture
def run_dir(tmp_path):
    return train(_config(tmp_path), progress=False)


def _craft_checkpoint(path, marker, like=None):
    """A checkpoint with the keys kale_fast expects (from `like`) plus the payload."""
    state = dict(torch.load(like, weights_only=True)) if like is not None else {}
    torch.save({**state, "config": {"name": _Payload(marker)}}, path)


def test_resume_refuses_a_crafted_checkpoint(tmp_path, run_dir, marker):
    _craft_checkpoint(run_dir / "checkpoint.pt", marker, like=run_dir / "checkpoint.pt")
    with pytest.raises(ValueError, match="refuses to load"):
        train(_config(tmp_path, n_iter=6), resume=True, progress=False)


@pytest.mark.parametrize("name", ["checkpoint.pt", "best.pt"])
def test_load_run_sample_and_eval_refuse_a_crafted_checkpoint(run_dir, marker, name):
    _craft_checkpoint(run_dir / name, marker, like=run_dir / "checkpoint.pt")
    with pytest.raises(ValueError, match="refuses to load"):
        load_run(run_dir)
    for verb in ("sample", "eval"):
        with pytest.raises(ValueError, match="refuses to load"):
            main([verb, "--run", str(run_dir)])


def test_base_from_refuses_a_crafted_checkpoint(tmp_path, run_dir, marker):
    _craft_checkpoint(run_dir / "checkpoint.pt", marker, like=run_dir / "checkpoint.pt")
    with pytest.raises(ValueError, match="refuses to load"):
        train(_config(tmp_path, name="child", base_from=str(run_dir)), progress=False)


def test_files_that_are_not_checkpoints_get_a_clear_error(run_dir):
    torch.save({"weights": torch.zeros(2)}, run_dir / "best.pt")
    with pytest.raises(ValueError, match="not a checkpoint of `kale-fast train`"):
        load_run(run_dir)


def test_files_kale_fast_writes_hold_tensors_and_plain_data_only(run_dir):
    main(["sample", "--run", str(run_dir), "--n", "8", "--steps", "2"])
    for name in ("checkpoint.pt", "samples-mala.pt"):
        torch.load(run_dir / name, weights_only=True)  # raises on anything but tensors and plain data


def test_cifar_batches_refuse_a_crafted_pickle(tmp_path, marker):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    good = {b"data": np.full((2, 3072), 255, dtype=np.uint8), b"labels": [1, 2], b"batch_label": b"x"}
    for protocol in (2, 5):  # CIFAR's own files are protocol 2; numpy arrays pickle differently at 5
        for i in range(1, 6):
            (folder / f"data_batch_{i}").write_bytes(pickle.dumps(good, protocol=protocol))
        images, labels = load_cifar10(folder)
        assert images.shape == (10, 3, 32, 32) and (images == 1).all() and labels.tolist()[:2] == [1, 2]
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": _Payload(marker), b"labels": [1]}))
    with pytest.raises(ValueError, match="refuses to load it"):
        load_cifar10(folder)


# --- the run folder ----------------------------------------------------------------------------------------

def test_a_second_writer_is_refused_while_the_first_holds_the_run(tmp_path):
    lock = RunFolderLock(tmp_path / "tiny")  # another process training this run (flock: per open file)
    try:
        with pytest.raises(RuntimeError, match=f"is in use: process {os.getpid()}"):
            train(_config(tmp_path), progress=False)
    finally:
        lock.release()
    assert (train(_config(tmp_path), progress=False) / "checkpoint.pt").exists()


def test_a_dead_writers_lock_does_not_block_the_run(tmp_path):
    holder = ("import os, signal, sys; from kale_fast.train.run_folder import RunFolderLock; "
              "lock = RunFolderLock(sys.argv[1]); os.kill(os.getpid(), signal.SIGKILL)")
    result = subprocess.run([sys.executable, "-c", holder, str(tmp_path / "tiny")], capture_output=True)
    assert result.returncode == -signal.SIGKILL
    assert "process" in (tmp_path / "tiny" / ".lock").read_text()  # the dead writer's note is still there
    assert (train(_config(tmp_path), progress=False) / "checkpoint.pt").exists()


@pytest.mark.parametrize("resume", [False, True])
def test_a_run_that_never_checkpointed_starts_over(tmp_path, run_dir, capsys, resume):
    (run_dir / "checkpoint.pt").unlink()  # as if killed before its first checkpoint: config, metrics, board stay
    (run_dir / "summary.json").unlink(missing_ok=True)
    train(_config(tmp_path), resume=resume, progress=False)
    assert "stopped before its first checkpoint; starting it over" in capsys.readouterr().err
    rounds = [yaml.safe_load(line)["round"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [2, 4]


def test_a_folder_with_foreign_files_is_never_taken_over(tmp_path):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"not a run's \(notes.txt\)"):
        train(_config(tmp_path), progress=False)
    assert (tmp_path / "tiny" / "notes.txt").read_text() == "mine"


def test_temporary_files_of_an_interrupted_save_are_deleted_at_the_next_start(tmp_path, run_dir, capsys):
    stale = run_dir / "tmp-checkpoint-abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    train(_config(tmp_path, n_iter=6), resume=True, progress=False)
    assert not stale.exists() and "deleted tmp-checkpoint-abc123.tmp" in capsys.readouterr().err


def test_ctrl_c_ends_with_a_resume_hint_and_the_run_resumes(tmp_path):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump({**TINY, "out_dir": str(tmp_path), "n_iter": 10 ** 6,
                                           "checkpoint_every": 3}))
    args = ["train", "--config", str(config_file), "--quiet", "--no-eval"]
    process = subprocess.Popen([sys.executable, "-m", "kale_fast.cli", *args], stderr=subprocess.PIPE, text=True)
    checkpoint = tmp_path / "tiny" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("interrupted:") and lines[0].endswith("--resume")
    assert not list((tmp_path / "tiny").glob("tmp-*"))
    rounds = torch.load(checkpoint, weights_only=True)["rounds_done"]
    assert main([*args, "--resume", "--n-iter", str(rounds + 3)]) == 0
    assert torch.load(checkpoint, weights_only=True)["rounds_done"] == rounds + 3
