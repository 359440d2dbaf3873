"""Nothing lost, nothing executed: every file kale_fast loads is read without running code from it, and a run
folder has one writer at a time, survives kills and interrupts, and restarts a run that never checkpointed."""
import errno
import json
import os
import pickle
import shutil
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
from tests._helpers import TINIER, Payload


def _config(tmp_path, **changes):
    return TrainConfig.from_dict({**TINIER, "out_dir": str(tmp_path), **changes})


def _payload_bytes_work(payload_bytes, marker):
    """The payload is live: plain pickle.loads runs it (else the tests below could not fail)."""
    pickle.loads(payload_bytes)
    assert marker.exists()
    marker.unlink()


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "marker"
    _payload_bytes_work(pickle.dumps(Payload(path)), path)
    yield path
    assert not path.exists(), "loading the crafted file ran its code"


@pytest.fixture
def run_dir(tmp_path):
    return train(_config(tmp_path), progress=False)


def _craft_checkpoint(path, marker, like=None):
    """A checkpoint with the keys kale_fast expects (from `like`) plus the payload."""
    state = dict(torch.load(like, weights_only=True)) if like is not None else {}
    torch.save({**state, "config": {"name": Payload(marker)}}, path)


def test_resume_refuses_a_crafted_checkpoint(tmp_path, run_dir, marker):
    _craft_checkpoint(run_dir / "checkpoint.pt", marker, like=run_dir / "checkpoint.pt")
    with pytest.raises(ValueError, match="refuses to load"):
        train(_config(tmp_path, n_iter=6), resume=True, progress=False)


@pytest.mark.parametrize("name", ["checkpoint.pt", "best.pt"])
def test_load_run_sample_and_eval_refuse_a_crafted_checkpoint(run_dir, marker, name, capsys):
    _craft_checkpoint(run_dir / name, marker, like=run_dir / "checkpoint.pt")
    with pytest.raises(ValueError, match="refuses to load"):
        load_run(run_dir)
    for verb in ("sample", "eval"):
        assert main([verb, "--run", str(run_dir)]) == 2  # a user's mistake: one line, exit code 2
        assert "refuses to load" in capsys.readouterr().err


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
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Payload(marker), b"labels": [1]}))
    with pytest.raises(ValueError, match="refuses to load it"):
        load_cifar10(folder)


# --- sizes in a file's config: checked against its weights before anything is allocated ----------------------

@pytest.mark.parametrize("changes, message", [
    (dict(hidden=60_000, depth=3), r"describes networks of 14400\d{6} numbers, its weights hold 75:"),  # 58 GB
    (dict(hidden=200_000), "config key 'hidden' must be <= 65536"),
    (dict(depth=10 ** 9), "config key 'depth' must be <= 1024"),
    (dict(hidden=7), "its weights do not fit the networks its config describes"),  # smaller: built, then checked
])
def test_a_checkpoint_whose_config_outgrows_its_weights_is_refused_at_once(run_dir, changes, message, capsys):
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    torch.save({**state, "config": {**state["config"], **changes}}, run_dir / "checkpoint.pt")
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        load_run(run_dir)
    assert time.perf_counter() - start < 10
    assert main(["sample", "--run", str(run_dir)]) == 2 and "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("data_shape, message", [([10 ** 9], "data_shape .* is larger than its"),
                                                  (["2"], "data_shape must be"), ([2, 2], "data_shape must be")])
def test_a_checkpoint_whose_data_shape_is_crafted_is_refused(run_dir, data_shape, message):
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    torch.save({**state, "data_shape": data_shape}, run_dir / "checkpoint.pt")
    with pytest.raises(ValueError, match=message):
        load_run(run_dir)


def test_a_gebm_file_whose_spec_outgrows_its_weights_is_refused_at_once(tmp_path, run_dir):
    import json as json_module

    import kale_fast as kf

    gebm, log_partition = kf.load_gebm(run_dir)
    gebm.save(tmp_path / "gebm.pt", log_partition)
    saved = torch.load(tmp_path / "gebm.pt", weights_only=True)
    spec = json_module.loads(saved["spec"])
    spec["config"].update(hidden=60_000, depth=3)  # 4 x 60000^2 floats: 58 GB if built
    torch.save({**saved, "spec": json_module.dumps(spec)}, tmp_path / "gebm.pt")
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"its config describes networks of 14400\d{6} numbers"):
        kf.load_gebm(tmp_path / "gebm.pt")
    assert time.perf_counter() - start < 10


# --- feature networks: weights only ----------------------------------------------------------------------

def _exported_digit_features(tmp_path):
    """DigitFeatures as torch.export (.pt2) and TorchScript programs, and as a state dict."""
    from kale_fast.metrics.image_scores import DigitFeatures

    net = DigitFeatures().eval()
    images = torch.rand(4, 1, 8, 8)
    torch.export.save(torch.export.export(net, (images,), dynamic_shapes={"x": {0: torch.export.Dim("b", min=2)}}),
                      tmp_path / "features.pt2")
    torch.jit.save(torch.jit.script(net), tmp_path / "features.ts")
    torch.save(net.state_dict(), tmp_path / "features.pt")
    return net, images


@pytest.fixture
def no_program_loaders(monkeypatch):
    """torch.export.load and torch.jit.load fail the test if called: a feature network file is never run."""
    def refuse(*args, **kwargs):
        raise AssertionError("a program file was loaded")
    monkeypatch.setattr(torch.export, "load", refuse)
    monkeypatch.setattr(torch.jit, "load", refuse)


@pytest.mark.parametrize("name, kind", [("features.pt2", "torch.export program"), ("features.ts", "TorchScript"),
                                        ("renamed.pt", "torch.export program")])
def test_feature_network_programs_are_refused_unrun(tmp_path, no_program_loaders, name, kind):
    from kale_fast.metrics.image_scores import feature_network_from_file

    _exported_digit_features(tmp_path)
    if name == "renamed.pt":  # a .pt2 renamed: refused by its contents, not its name
        (tmp_path / "features.pt2").rename(tmp_path / name)
    with pytest.raises(ValueError, match=f"is a {kind}.*holds code, which kale_fast does not run"):
        feature_network_from_file(tmp_path / name, (1, 8, 8))


def test_feature_network_weights_give_the_same_features(tmp_path, no_program_loaders):
    from safetensors.torch import save_file

    from kale_fast.metrics.image_scores import feature_network_from_file

    net, images = _exported_digit_features(tmp_path)
    save_file(net.state_dict(), tmp_path / "features.safetensors")
    for name in ("features.pt", "features.safetensors"):
        loaded = feature_network_from_file(tmp_path / name, (1, 8, 8))
        assert not loaded.training
        torch.testing.assert_close(loaded(images), net(images), rtol=0, atol=0)


def test_feature_network_state_dict_with_a_payload_is_refused(tmp_path, marker):
    from kale_fast.metrics.image_scores import feature_network_from_file

    torch.save({"features.0.weight": Payload(marker)}, tmp_path / "inception.pth")
    with pytest.raises(ValueError, match="refuses to load"):
        feature_network_from_file(tmp_path / "inception.pth", (1, 8, 8))


def test_the_feature_network_cache_is_read_as_weights_only(tmp_path, marker):
    from kale_fast.metrics.image_scores import DigitFeatures, cached_feature_network

    images, labels = torch.rand(20, 1, 8, 8) * 2 - 1, torch.arange(20) % 10
    (tmp_path / "cache").mkdir()
    torch.save({"features.0.weight": Payload(marker)}, tmp_path / "cache" / "digits.pt")
    with pytest.raises(ValueError, match="refuses to load"):
        cached_feature_network("digits", images, labels, tmp_path / "cache")
    torch.save(DigitFeatures(1, 7).state_dict(), tmp_path / "cache" / "digits.pt")  # another data set's classes
    with pytest.raises(ValueError, match=r"DigitFeatures weights for 1 channel\(s\) and 7 classes; expected \(1, 10\)"):
        cached_feature_network("digits", images, labels, tmp_path / "cache")


def test_eval_refuses_a_run_whose_config_names_a_program(tmp_path, no_program_loaders, capsys):
    """A run folder whose saved config names a .pt2 feature network (item 7 of issue 20): `eval` refuses it
    in one line, with `--feature-net` too; the refusal comes before the file is read."""
    _exported_digit_features(tmp_path)
    run_dir = train(TrainConfig.from_dict({**TINIER, "out_dir": str(tmp_path), "dataset": "digits", "base": "conv",
                                           "latent_dim": 4, "n_test": 100, "n_eval": 16, "n_iter": 1,
                                           "checkpoint_every": 1, "feature_net": str(tmp_path / "features.pt2")}),
                    progress=False)
    for args in ([], ["--feature-net", str(tmp_path / "features.ts")]):
        assert main(["eval", "--run", str(run_dir), *args]) == 2
        err = capsys.readouterr().err
        assert "holds code, which kale_fast does not run" in err and err.count("\n") == 1, err


def test_safetensors_that_are_damaged_get_one_line(tmp_path):
    from kale_fast.metrics.image_scores import read_weights

    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="is not a readable .safetensors file"):
        read_weights(tmp_path / "bad.safetensors")
    (tmp_path / "list.pt").write_bytes(b"")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"is not a state dict \(\{name: tensor\}"):
        read_weights(tmp_path / "list.pt")


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


def _ctrl_c(process: subprocess.Popen) -> str:
    """Send SIGINT and wait up to 60 s for the end; its stderr. A process that does not end is aborted and the
    test fails with every thread's stack (the children run with PYTHONFAULTHANDLER): a hang seen once in CI."""
    process.send_signal(signal.SIGINT)
    try:
        return process.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        pytest.fail(f"SIGINT did not end the run in 60 s; its stacks:\n{process.communicate()[1][-6000:]}")


def _interruptible():
    """Run in the child before exec: Ctrl-C as a terminal would deliver it. A child inherits an ignored or
    blocked SIGINT, and a suite started in the background (`cmd &` in a script, nohup) ignores SIGINT: there the
    child trained on 60 s after SIGINT (its stack in Adam's step)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


_CHILD = dict(env={**os.environ, "PYTHONFAULTHANDLER": "1"}, preexec_fn=_interruptible)


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raises KeyboardInterrupt in this process for the test (a suite started in the background ignores
    it)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    unblocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_ends_with_a_resume_hint_and_the_run_resumes(tmp_path):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump({**TINIER, "out_dir": str(tmp_path), "n_iter": 10 ** 6,
                                           "checkpoint_every": 3}))
    args = ["train", "--config", str(config_file), "--quiet", "--no-eval"]
    process = subprocess.Popen([sys.executable, "-m", "kale_fast.cli", *args], stderr=subprocess.PIPE, text=True,
                               **_CHILD)
    checkpoint = tmp_path / "tiny" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    stderr = _ctrl_c(process)
    assert process.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("interrupted:") and lines[0].endswith("--resume")
    assert not list((tmp_path / "tiny").glob("tmp-*"))
    rounds = torch.load(checkpoint, weights_only=True)["rounds_done"]
    assert main([*args, "--resume", "--n-iter", str(rounds + 3)]) == 0
    assert torch.load(checkpoint, weights_only=True)["rounds_done"] == rounds + 3


def test_two_train_processes_on_one_run_name_one_is_refused(tmp_path):
    """Two real `kale-fast train` processes started at once on one run: the one that loses the lock ends with
    exit code 2 and names the holder; the other trains on (and is interrupted here)."""
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump({**TINIER, "out_dir": str(tmp_path), "n_iter": 10 ** 6}))
    command = [sys.executable, "-m", "kale_fast.cli", "train", "--config", str(config_file), "--quiet", "--no-eval"]
    processes = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True, **_CHILD) for _ in range(2)]
    try:
        deadline = time.monotonic() + 120
        while all(p.poll() is None for p in processes) and time.monotonic() < deadline:
            time.sleep(0.05)
        refused = next(p for p in processes if p.poll() is not None)
        survivor = next(p for p in processes if p is not refused)
        stderr = refused.stderr.read()
        assert refused.returncode == 2 and f"is in use: process {survivor.pid}" in stderr, stderr
        assert stderr.count("\n") == 1 and survivor.poll() is None
        while not (tmp_path / "tiny" / "config.yaml").exists() and survivor.poll() is None:
            time.sleep(0.05)  # the survivor is inside train(): Ctrl-C ends it with the resume hint
        stderr = _ctrl_c(survivor)
        assert survivor.returncode == 130, stderr
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
            process.stderr.close()


# --- planted links: nothing written through them ------------------------------------------------------

@pytest.mark.parametrize("resume", [False, True])
def test_a_lock_planted_as_a_link_is_refused(tmp_path, victim, resume):
    run_dir = train(_config(tmp_path), progress=False) if resume else tmp_path / "tiny"
    run_dir.mkdir(exist_ok=True)
    (run_dir / ".lock").unlink(missing_ok=True)
    (run_dir / ".lock").symlink_to(victim)
    with pytest.raises(ValueError, match=r"\.lock is a symbolic link; kale_fast writes only plain files"):
        train(_config(tmp_path, n_iter=6), resume=resume, progress=False)
    (run_dir / ".lock").unlink()
    os.link(victim, run_dir / ".lock")  # a hard link: the same file under the run's name
    with pytest.raises(ValueError, match=r"\.lock is not a plain file of its own"):
        train(_config(tmp_path, n_iter=6), resume=resume, progress=False)


@pytest.mark.parametrize("name", ["metrics.jsonl", "training.png", "tensorboard"])
def test_resume_refuses_a_run_folder_holding_links(tmp_path, run_dir, victim, name):
    target = victim if name != "tensorboard" else tmp_path
    path = run_dir / name
    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    path.symlink_to(target)
    with pytest.raises(ValueError, match=f"holds symbolic links \\({name}\\)"):
        train(_config(tmp_path, n_iter=6), resume=True, progress=False)


def test_eval_and_sample_replace_planted_links_and_never_write_through_them(tmp_path, run_dir, victim):
    written = ["samples.png", "energy.png", "metric-vs-steps.png", "summary.json", "samples-mala.pt",
               "samples-mala.png", "samples-mala.csv"]
    for name in written:
        (run_dir / name).unlink(missing_ok=True)
        (run_dir / name).symlink_to(victim)
    assert main(["eval", "--run", str(run_dir)]) == 0
    assert main(["sample", "--run", str(run_dir), "--sampler", "mala", "--n", "8", "--steps", "2"]) == 0
    for name in written:
        assert not (run_dir / name).is_symlink() and (run_dir / name).stat().st_size > 0, name
    out = tmp_path / "table.md"
    out.symlink_to(victim)
    assert main(["report", str(run_dir), str(run_dir), "--out", str(out)]) == 0
    assert not out.is_symlink()


def test_a_kill_during_a_plot_leaves_the_previous_png(tmp_path, monkeypatch):
    """A plot is written whole or not at all: a write that dies half-way leaves the previous PNG as it was."""
    from kale_fast.train import plots

    points = {"data": torch.randn(50, 2), "base": torch.randn(50, 2)}
    path = tmp_path / "samples.png"
    plots.scatter_samples(points, path)
    before = path.read_bytes()

    def die_half_way(fig, tmp, **kwargs):
        with open(tmp, "wb") as handle:
            handle.write(before[: len(before) // 2])
        raise KeyboardInterrupt  # as a kill's signal would end the write

    monkeypatch.setattr(plots.Figure, "savefig", lambda fig, tmp, **kw: die_half_way(fig, tmp, **kw))
    with pytest.raises(KeyboardInterrupt):
        plots.scatter_samples(points, path)
    assert path.read_bytes() == before and not list(tmp_path.glob("tmp-*"))


def test_a_ctrl_c_during_a_checkpoint_write_lands_after_it(tmp_path, ctrl_c_raises):
    """SIGINT inside an atomic write is delivered when the write is done: the new file whole, then
    KeyboardInterrupt (not torch.save's RuntimeError around a cut zip stream)."""
    from kale_fast import _io

    state = {"weights": torch.randn(1000)}

    def interrupted_save(tmp):
        signal.raise_signal(signal.SIGINT)  # as a Ctrl-C in the middle of the write
        torch.save(state, tmp)

    with pytest.raises(KeyboardInterrupt):
        _io.atomic_write(tmp_path / "checkpoint.pt", interrupted_save)
    assert torch.equal(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["weights"], state["weights"])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler and not list(tmp_path.glob("tmp-*"))


# --- runs that always go on: torn lines, full disks ---------------------------------------------------------

def _rounds(run_dir):
    return [json.loads(line)["round"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_torn_last_metric_line_is_dropped_with_a_warning_on_resume(tmp_path, run_dir):
    with open(run_dir / "metrics.jsonl", "a") as handle:
        handle.write('{"round": 5, "time_s": 0.1, "energy_lo')  # a kill or a full disk cut the write short
    with pytest.warns(UserWarning, match="its last line is torn"):
        train(_config(tmp_path, n_iter=6), resume=True, progress=False)
    assert _rounds(run_dir) == [2, 4, 6]


def test_a_damaged_metric_line_is_named_in_one_line(tmp_path, run_dir, capsys):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "metrics.jsonl").write_text("\x00\xff garbage\n" + "".join(lines))
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump({**TINIER, "out_dir": str(tmp_path), "n_iter": 6}))
    assert main(["train", "--config", str(config_file), "--resume", "--no-eval", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "metrics.jsonl: line 1 is not a metric line of kale_fast" in err and err.count("\n") == 1, err


class _DiskFillsUp:
    """A file whose writes fail as a full disk's do once `room` bytes are written: the bytes that fit are written,
    then OSError(ENOSPC)."""

    def __init__(self, handle, room):
        self.handle, self.room = handle, room

    def write(self, data):
        fits = data[: max(0, self.room)]
        self.room -= len(data)
        self.handle.write(fits)
        self.handle.flush()
        if len(fits) < len(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        return len(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def test_a_full_disk_while_logging_says_so_and_loses_nothing(tmp_path, monkeypatch, capsys):
    from kale_fast.train import metrics_log

    real_open = metrics_log.open_plain_file
    monkeypatch.setattr(metrics_log, "open_plain_file", lambda path, mode: _DiskFillsUp(real_open(path, mode), 200))
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump({**TINIER, "out_dir": str(tmp_path)}))
    args = ["train", "--config", str(config_file), "--no-eval", "--quiet"]
    assert main(args) == 2  # the round-2 line fits, the round-4 line does not
    err = capsys.readouterr().err
    assert err.startswith("kale-fast train: error: no space left on the device to write") and err.count("\n") == 1
    assert "its lines before round 4 and the last checkpoint are intact" in err, err
    run_dir = tmp_path / "tiny"
    assert _rounds(run_dir) == [2]  # whole lines only: the torn one was cut off
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["rounds_done"] == 2
    monkeypatch.setattr(metrics_log, "open_plain_file", real_open)  # space freed: the run goes on
    assert main([*args, "--resume"]) == 0
    assert _rounds(run_dir) == [2, 4]


@pytest.mark.parametrize("what", ["checkpoint", "text"])
def test_a_full_disk_during_an_atomic_write_keeps_the_previous_file(tmp_path, monkeypatch, what):
    from kale_fast import _io

    path = tmp_path / ("checkpoint.pt" if what == "checkpoint" else "summary.json")
    write = (lambda value: _io.atomic_torch_save({"x": torch.full((1000,), value)}, path)) if what == "checkpoint" \
        else (lambda value: _io.atomic_write_text(str(value) * 5000, path))
    write(1.0)
    before = path.read_bytes()
    real_open = open
    monkeypatch.setattr(_io, "open", lambda *a, **k: _DiskFillsUp(real_open(*a, **k), 100), raising=False)
    with pytest.raises(_io.DiskFullError, match=f"no space left on the device to write {path} .* {path.name} keeps "
                                                f"its previous contents"):
        write(2.0)
    assert path.read_bytes() == before and not list(tmp_path.glob("tmp-*"))


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_an_unwritable_folder_is_named(run_dir, capsys, monkeypatch, code):
    from kale_fast import _io

    def refuse(*args, **kwargs):  # what mkstemp meets in a read-only folder (root is let through chmod 555)
        raise (PermissionError if code == errno.EACCES else OSError)(code, os.strerror(code), kwargs.get("dir"))

    monkeypatch.setattr(_io.tempfile, "mkstemp", refuse)
    assert main(["sample", "--run", str(run_dir), "--n", "8", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the sampler's progress bars
    assert last.startswith(f"kale-fast sample: error: cannot write {run_dir}/samples-mala.pt: its folder {run_dir} "
                           f"is not writable") and "Traceback" not in err, err


# --- configs and files ------------------------------------------------------------------------------------

def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, capsys):
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]" for i in range(7)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines + ["name: *h"]) + "\n")  # 10^8 strings once expanded
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"anchors and aliases \(&name, \*name\) are not allowed .* \(line 1\)"):
        TrainConfig.from_yaml(bomb)
    assert time.perf_counter() - start < 5
    anchored = tmp_path / "anchored.yaml"
    anchored.write_text("name: &n tiny\n")
    with pytest.raises(ValueError, match="anchors and aliases"):
        TrainConfig.from_yaml(anchored)
    huge = tmp_path / "huge.yaml"
    huge.write_text("name: tiny\n" + "# padding\n" * 200_000)
    with pytest.raises(ValueError, match="at most 1048576 bytes"):
        TrainConfig.from_yaml(huge)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_are_written_with_the_users_umask(tmp_path, umask):
    from kale_fast._io import atomic_torch_save, atomic_write_text
    from kale_fast.models import MLP
    import kale_fast as kf

    previous = os.umask(umask)
    try:
        atomic_write_text("text", tmp_path / "a.txt")
        atomic_torch_save({"x": torch.zeros(2)}, tmp_path / "b.pt")
        kf.GEBM(MLP(2, 2, (4,)), MLP(2, 1, (4,)), 2).save(tmp_path / "gebm.pt")
        run_dir = train(_config(tmp_path), progress=False)
    finally:
        os.umask(previous)
    written = [tmp_path / "a.txt", tmp_path / "b.pt", tmp_path / "gebm.pt",
               *(p for p in run_dir.iterdir() if p.is_file())]
    assert {p.name for p in written} >= {"checkpoint.pt", "config.yaml", "metrics.jsonl", ".lock"}
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
