"""The public KALE steps (kf.kale_energy_step, kf.kale_base_step, kf.KALETrainer) and their compiled twin
(train/compiled_steps.py): the math against a hand-written loss, the loop running the same steps, and compiled
gradients equal to eager ones up to fp32 rounding."""
import copy
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import kale_fast as kf
from kale_fast.models import MLP
from kale_fast.train.compiled_steps import CompiledSteps, adam_state, apply_adam, traceable_kale_loss
from kale_fast.train.steps import energy_objective


def _energy(seed=0, hidden=16):
    torch.manual_seed(seed)
    return MLP(2, 1, (hidden, hidden))


def _hand_written_energy_loss(energy, x_real, x_base, t, a, penalty):
    """The energy step's objective as the paper writes it, by plain autograd."""
    e_real, e_base = energy(x_real).squeeze(1), energy(x_base).squeeze(1)
    loss = e_real.mean() + a + torch.exp(-(e_base + a)).mean() - 1
    x_hat = (t * x_real + (1 - t) * x_base).requires_grad_(True)
    (g,) = torch.autograd.grad(energy(x_hat).sum(), x_hat, create_graph=True)
    return loss + penalty * g.pow(2).sum(1).mean()


def test_energy_step_follows_the_gradient_of_the_kale_loss_plus_penalty():
    energy = _energy().double()
    reference = copy.deepcopy(energy)
    a = nn.Parameter(torch.tensor(0.3, dtype=torch.float64))
    a_reference = a.detach().clone().requires_grad_(True)
    x_real, x_base, t = torch.randn(32, 2).double(), torch.randn(32, 2).double(), torch.rand(32, 1).double()
    lr = 0.1
    step = kf.kale_energy_step(energy, torch.optim.SGD([*energy.parameters(), a], lr=lr), x_real, x_base, a,
                               penalty=0.5, t=t)
    total = _hand_written_energy_loss(reference, x_real, x_base, t, a_reference, 0.5)
    grads = torch.autograd.grad(total, [*reference.parameters(), a_reference])
    for new, old, g in zip([*energy.parameters(), a], [*reference.parameters(), a_reference], grads):
        torch.testing.assert_close(new.detach(), old.detach() - lr * g, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(step.loss + step.penalty, total.detach(), rtol=1e-10, atol=1e-12)


def test_base_step_moves_only_the_base_along_minus_log_mean_exp():
    torch.manual_seed(1)
    base, energy = MLP(2, 2, (8,)).double(), _energy().double()
    energy_before = [p.detach().clone() for p in energy.parameters()]
    reference = copy.deepcopy(base)
    z = torch.randn(16, 2).double()
    loss = kf.kale_base_step(base, energy, torch.optim.SGD(base.parameters(), lr=0.1), z)
    e = energy(reference(z)).squeeze(1)
    expected = -(torch.logsumexp(-e, 0) - math.log(16))
    grads = torch.autograd.grad(expected, list(reference.parameters()))
    for new, old, g in zip(base.parameters(), reference.parameters(), grads):
        torch.testing.assert_close(new.detach(), old.detach() - 0.1 * g, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss, expected.detach())
    assert all(p.grad is None and torch.equal(p, q) for p, q in zip(energy.parameters(), energy_before))


def test_kale_trainer_starts_a_at_its_monte_carlo_value_and_checks_its_arguments():
    torch.manual_seed(0)
    gebm = kf.GEBM(MLP(2, 2, (8,)), kf.ClampedEnergy(_energy(), -1.0), 2)
    trainer = kf.KALETrainer(gebm, n_partition_samples=4096, seed=3)
    estimate, error = gebm.log_partition(4096, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(trainer.log_partition.detach(), estimate)
    metrics = trainer.energy_step(torch.randn(64, 2))
    assert set(metrics) == {"energy_loss", "penalty"} and all(torch.isfinite(v) for v in metrics.values())
    assert torch.isfinite(trainer.base_step(64)["base_loss"])
    with pytest.raises(TypeError, match="gebm must be a kf.GEBM"):
        kf.KALETrainer(MLP(2, 1))
    with pytest.raises(ValueError, match="objective must be"):
        kf.KALETrainer(gebm, objective="ml")
    with pytest.raises(ValueError, match="same shape"):
        kf.kale_energy_step(gebm.energy, trainer.energy_optimizer, torch.randn(4, 2), torch.randn(5, 2))


def test_compile_refuses_networks_that_update_state_in_a_forward():
    from kale_fast.models import with_spectral_norm

    with pytest.raises(ValueError, match="compile: the energy has layers that update state"):
        CompiledSteps(MLP(2, 2), with_spectral_norm(MLP(2, 1)), 0.1, "kale")
    with pytest.raises(ValueError, match="compile: the base"):
        CompiledSteps(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), MLP(2, 1), 0.1, "kale")


def _flat(tensors):
    return torch.cat([t.reshape(-1).double() for t in tensors])


@pytest.mark.slow  # torch.compile of both steps: about 30 s on a quiet core, 100 s on a loaded one
def test_compiled_gradients_equal_eager_ones_up_to_fp32_rounding():
    """The same inputs through eager autograd in fp64 (the truth), eager in fp32 and the compiled functional graph
    in fp32: compiled is as close to the truth as eager is (all gradients as one vector, normwise). Elementwise
    relative errors are not the measure: the gradients of A and of the last bias are 1 - mean exp(-(E + A)), a
    difference of nearly equal numbers at A's optimum, where fp32 rounding alone (eager too) gives relative errors
    of 1e-2 to 1. That, and inductor's random numbers (which differ from eager's under the same seed, so a graph
    drawing its own interpolates trains on another minibatch), were the 8.6e-3 once reported."""
    torch.manual_seed(0)
    base, energy = MLP(2, 2, (32, 32)), MLP(2, 1, (32, 32, 32))
    x_real, z, t = torch.randn(64, 2), torch.randn(64, 2), torch.rand(64, 1)
    with torch.no_grad():
        x_base = base(z)
        a = torch.logsumexp(-energy(x_base).squeeze(1), 0) - math.log(64) + 0.01

    def eager(dtype):
        e, b = copy.deepcopy(energy).to(dtype), copy.deepcopy(base).to(dtype)
        a_ = a.to(dtype).requires_grad_(True)
        energies = lambda x: e(x).reshape(len(x))  # noqa: E731

        def input_gradient(x):
            x = x.detach().requires_grad_(True)
            return torch.autograd.grad(energies(x).sum(), x, create_graph=True)[0]

        loss, penalty = energy_objective(energies, input_gradient, x_real.to(dtype), x_base.to(dtype), t.to(dtype),
                                         a_, 0.1)
        energy_grads = torch.autograd.grad(loss + penalty, [*e.parameters(), a_])
        base_loss = -kf.log_mean_exp(-energies(b(z.to(dtype))))
        return _flat(energy_grads), _flat(torch.autograd.grad(base_loss, list(b.parameters())))

    steps = CompiledSteps(base, energy, 0.1, "kale")
    values = lambda m: {k: p.detach() for k, p in m.named_parameters()}  # noqa: E731
    (param_grads, a_grad), _ = steps._energy_step(values(energy), a, values(base), x_real, z, t, None)
    compiled_energy = _flat([*param_grads.values(), a_grad])
    base_grads, _ = steps._base_step(values(base), values(energy), z, None)
    compiled_base = _flat(base_grads.values())
    truth, fp32 = eager(torch.float64), eager(torch.float32)
    for compiled, eager32, exact in ((compiled_energy, fp32[0], truth[0]), (compiled_base, fp32[1], truth[1])):
        eager_error = ((eager32 - exact).norm() / exact.norm()).item()
        compiled_error = ((compiled - exact).norm() / exact.norm()).item()
        assert eager_error < 1e-5 and compiled_error < max(4 * eager_error, 1e-6), (eager_error, compiled_error)


def test_several_energy_steps_in_one_graph_are_the_steps_one_by_one():
    """The function a round's compiled call runs (k energy steps, the base samples of all k in one forward, Adam's
    scalars of k steps from one adam_state), run eagerly in fp64, against k single steps on the same draws: the
    same parameters, A and optimizer state (the step counts advanced by k)."""
    torch.manual_seed(0)
    base, energy = MLP(2, 2, (16,)).double(), MLP(2, 1, (16, 16)).double()
    k, n = 3, 32
    x_reals, zs, ts = (torch.randn(k, n, 2, dtype=torch.float64), torch.randn(k, n, 2, dtype=torch.float64),
                       torch.rand(k, n, 1, dtype=torch.float64))
    results = []
    for together in (True, False):
        e, b = copy.deepcopy(energy), copy.deepcopy(base)
        a = nn.Parameter(torch.tensor(0.3, dtype=torch.float64))
        optimizer = torch.optim.Adam([*e.parameters(), a], lr=1e-2, betas=(0.5, 0.999))
        steps = CompiledSteps(b, e, 0.1, "kale")
        values = lambda m: {key: p.detach() for key, p in m.named_parameters()}  # noqa: E731
        trained = [*e.parameters(), a]
        with torch.no_grad():
            if together:
                losses = [steps._energy_steps_eager(values(e), a.detach(), values(b), x_reals, zs, ts,
                                                    adam_state(optimizer, trained, k))]
            else:
                losses = [steps._energy_step_eager(values(e), a.detach(), values(b), x_reals[i], zs[i], ts[i],
                                                   adam_state(optimizer, trained).of_step(0))[1] for i in range(k)]
        state = optimizer.state_dict()["state"]
        results.append((_flat([*e.parameters(), a]), _flat([s[name] for s in state.values()
                                                            for name in ("exp_avg", "exp_avg_sq")]),
                        [float(s["step"]) for s in state.values()], _flat(losses[-1])))
    (params, moments, counts, last), (params_1, moments_1, counts_1, last_1) = results
    torch.testing.assert_close(params, params_1, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(moments, moments_1, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(last, last_1, rtol=1e-12, atol=1e-14)
    assert counts == counts_1 == [float(k)] * len(counts)


def test_traceable_kale_loss_matches_kale_loss():
    e_data, e_gen, a = torch.randn(100).double(), torch.randn(77).double() * 3, torch.tensor(0.7).double()
    torch.testing.assert_close(traceable_kale_loss(e_data, e_gen, a), kf.kale_loss(e_data, e_gen, a))
    torch.testing.assert_close(traceable_kale_loss(e_data, e_gen, None), kf.kale_loss(e_data, e_gen))


def test_the_own_networks_example_of_the_training_docs_runs(capsys):
    """docs/training.md's KALETrainer example, as written but for its round and sample counts (the full one takes
    minutes)."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()
    section = text[text.index("## Your own networks"):]
    code = section[section.index("```python\n") + len("```python\n"):section.index("```\n", section.index("```python"))]
    code, count = re.subn(r"^ROUNDS, TUNE_ROUNDS, SAMPLES = .*$", "ROUNDS, TUNE_ROUNDS, SAMPLES = 3, 2, 64", code,
                          flags=re.M)
    assert count == 1, "the example's round counts moved: update this test"
    exec(compile(code, "docs/training.md", "exec"), {"__name__": "docs_example"})
    assert re.fullmatch(r"base 0\.\d{3}, GEBM 0\.\d{3}\n|base 1\.000, GEBM \d\.\d{3}\n", capsys.readouterr().out)


def test_the_in_graph_adam_update_is_torch_adams():
    """adam_state + apply_adam (the optimizer step inside a compiled step, run eagerly here) against
    torch.optim.Adam's own step on the same gradients, in fp64: same parameters and the same state_dict (so
    checkpoints and resumes cannot tell them apart), with and without weight decay; a parameter of the optimizer
    without a gradient (A under "dv") is left alone, as Adam leaves it."""
    for weight_decay in (0.0, 0.01):
        torch.manual_seed(0)
        ours = [nn.Parameter(torch.randn(5, 3, dtype=torch.float64)), nn.Parameter(torch.randn(3, dtype=torch.float64))]
        idle = nn.Parameter(torch.zeros((), dtype=torch.float64))
        theirs = [nn.Parameter(p.detach().clone()) for p in [*ours, idle]]
        ours_opt = torch.optim.Adam([*ours, idle], lr=1e-2, betas=(0.5, 0.999), weight_decay=weight_decay)
        theirs_opt = torch.optim.Adam(theirs, lr=1e-2, betas=(0.5, 0.999), weight_decay=weight_decay)
        for step in range(4):
            grads = [torch.randn_like(p) for p in ours]
            if step == 2:  # a changed learning rate takes effect (it is a tensor inside the graph)
                ours_opt.param_groups[0]["lr"] = theirs_opt.param_groups[0]["lr"] = 3e-3
            with torch.no_grad():
                apply_adam([p.detach() for p in ours], grads, adam_state(ours_opt, ours).of_step(0))
            for p, g in zip(theirs, grads):
                p.grad = g
            theirs_opt.step()
        for p, q in zip([*ours, idle], theirs):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-14)
        ours_state, theirs_state = ours_opt.state_dict()["state"], theirs_opt.state_dict()["state"]
        assert ours_state.keys() == theirs_state.keys() == {0, 1}
        for key in ours_state:
            for name in ("step", "exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(ours_state[key][name], theirs_state[key][name], rtol=1e-12, atol=1e-14)
    # optimizers it does not step: their own step runs (None), nothing touched
    p = nn.Parameter(torch.zeros(2))
    assert adam_state(torch.optim.Adam([p], amsgrad=True), [p]) is None
    assert adam_state(torch.optim.SGD([p], lr=0.1), [p]) is None
    other = torch.optim.Adam([nn.Parameter(torch.zeros(2))])
    assert adam_state(other, [p]) is None and not other.state


@pytest.mark.slow  # a compiled KALETrainer with a gradient hook and one without: two graphs of each step
def test_a_gradient_hook_gets_the_compiled_gradients_before_the_step():
    """With reduce_gradients (data-parallel averaging), the compiled graph stops at the gradients, the hook sees
    them in .grad and the optimizer steps after it; the result is the in-graph update's."""
    torch.manual_seed(0)
    gebm = kf.GEBM(MLP(2, 2, (8,)), _energy(hidden=8), 2)
    data = torch.randn(64, 2)
    seen = []

    def hook(params):
        seen.append([p.grad.clone() for p in params])

    trainers = [kf.KALETrainer(copy.deepcopy(gebm), compile=True, seed=1, reduce_gradients=h, n_partition_samples=64)
                for h in (None, hook)]
    for trainer in trainers:
        for _ in range(3):
            trainer.energy_step(data)
            trainer.base_step(64)
    assert len(seen) == 6 and all(torch.isfinite(g).all() for grads in seen for g in grads)
    assert len(seen[0]) == len(list(gebm.energy.parameters())) + 1 and len(seen[1]) == len(list(gebm.base.parameters()))
    final = [_flat([*t.gebm.parameters(), t.log_partition]) for t in trainers]
    assert ((final[1] - final[0]).norm() / final[0].norm()).item() < 1e-6


@pytest.mark.slow  # two torch.compile'd steps
def test_a_compiled_run_follows_the_eager_run_under_a_seed():
    """20 rounds (120 steps, Adam inside the graph against foreach Adam) of `compile: true` against eager from one
    seed: the parameters and the optimizers' moments stay within fp32 rounding of each other (measured 1.2e-7
    relative), the step counts are equal, and nothing recompiles after the first round, a changed learning rate
    included."""
    from kale_fast.data import toy_dataset
    from kale_fast.train import TrainConfig, Trainer

    config = TrainConfig.from_dict(dict(hidden=32, depth=2, latent_dim=2, batch_size=128, penalty=0.1,
                                        n_iter_d_init=5, n_iter_d=5, n_partition_samples=1024, lr_energy=1e-3,
                                        lr_base=1e-3))
    data = toy_dataset("8gaussians", 2048)
    final, moments, steps = [], [], []
    for compiled in (False, True):
        trainer = Trainer.create(config.replace(compile=compiled), data)
        trainer.round(data)
        with torch.compiler.set_stance("fail_on_recompile"):
            for round_ in range(19):
                if round_ == 10:
                    trainer.energy_optimizer.param_groups[0]["lr"] = 5e-4
                trainer.round(data)
        final.append(_flat([*trainer.gebm.parameters(), trainer.log_partition]))
        states = [s for optimizer in (trainer.energy_optimizer, trainer.base_optimizer)
                  for s in optimizer.state_dict()["state"].values()]
        moments.append(_flat([s[name] for s in states for name in ("exp_avg", "exp_avg_sq")]))
        steps.append([float(s["step"]) for s in states])
    assert ((final[1] - final[0]).norm() / final[0].norm()).item() < 1e-5
    assert ((moments[1] - moments[0]).norm() / moments[0].norm()).item() < 1e-4
    assert steps[0] == steps[1]


@pytest.mark.slow  # compiled steps (the shapes of the test above: compiled once per process)
def test_a_compiled_run_resumes_bit_for_bit():
    """A compiled run's state (networks, A, both Adams' state, generators) restored into a fresh compiled Trainer
    continues exactly as the unbroken run: the in-graph optimizer keeps its state in torch.optim.Adam's own
    tensors, which the checkpoint holds."""
    from kale_fast.data import toy_dataset
    from kale_fast.train import TrainConfig, Trainer

    config = TrainConfig.from_dict(dict(hidden=32, depth=2, latent_dim=2, batch_size=128, penalty=0.1,
                                        n_iter_d_init=5, n_iter_d=5, n_partition_samples=1024, lr_energy=1e-3,
                                        lr_base=1e-3, compile=True))
    data = toy_dataset("8gaussians", 2048)
    unbroken = Trainer.create(config, data)
    for _ in range(3):
        unbroken.round(data)
    state = copy.deepcopy(unbroken.state_dict())
    resumed = Trainer.create(config, data)
    resumed.load_state_dict(state)
    for _ in range(3):
        unbroken.round(data)
        resumed.round(data)
    for trainer in (unbroken, resumed):
        assert [float(s["step"]) for s in trainer.energy_optimizer.state_dict()["state"].values()] == [30.0] * 7
    assert torch.equal(_flat([*unbroken.gebm.parameters(), unbroken.log_partition]),
                       _flat([*resumed.gebm.parameters(), resumed.log_partition]))


def test_the_graph_pass_computes_silus_sigmoid_once_per_pre_activation():
    """The inductor pass of the compiled steps on a graph with SiLU decomposed as inductor sees it
    (u / (1 + exp(-u))) and two more sigmoid(u) (SiLU's first and second derivatives): one sigmoid(u) and no exp
    remain, and the graph computes the same values."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from kale_fast.train.compiled_steps import _INDUCTOR_OPTIONS

    def silu_and_derivatives(u, v):
        return u / (1 + torch.exp(-u)), torch.sigmoid(u) * 2, torch.sigmoid(u) + torch.sigmoid(v)

    u, v = torch.randn(8, 5), torch.randn(8, 5)
    module = make_fx(silu_and_derivatives)(u, v)
    _INDUCTOR_OPTIONS["post_grad_custom_post_pass"](module.graph)
    module.recompile()
    targets = [node.target for node in module.graph.nodes]
    assert targets.count(torch.ops.aten.sigmoid.default) == 2 and torch.ops.aten.exp.default not in targets
    for ours, reference in zip(module(u, v), silu_and_derivatives(u, v)):
        torch.testing.assert_close(ours, reference)


_FREED_HEAP_PROBE = """
import ctypes, sys, torch
import kale_fast as kf
from kale_fast.models import MLP
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "compiled":
    kf.KALETrainer(kf.GEBM(MLP(2, 2, (8,)), MLP(2, 1, (8,)), 2), compile=True, n_partition_samples=16)  # compiles
    # nothing until a step runs
held = [torch.ones(4 << 20) for _ in range(3)]  # 3 blocks of 16 MiB, written
del held
print(libc.mallinfo2().fordblks)
"""


def _glibc_with_mallinfo2() -> bool:
    libc, version = platform.libc_ver()
    return sys.platform.startswith("linux") and libc == "glibc" and tuple(map(int, version.split("."))) >= (2, 33)


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="glibc >= 2.33 (mallinfo2)")
def test_a_process_with_compiled_steps_keeps_its_freed_heap_mapped():
    """After a KALETrainer(compile=True) is built, freed blocks of 16 MiB stay in the heap (glibc's defaults mmap
    them and unmap them at free, as they trimmed a compiled call's freed buffers and faulted them back in at every
    call: kale_fast/train/heap.py). Each in a fresh process, as the setting is process-wide."""
    def free_heap_bytes(mode: str, **env: str) -> int:
        done = subprocess.run([sys.executable, "-c", _FREED_HEAP_PROBE, mode], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).resolve().parents[2], env={**os.environ, **env})
        return int(done.stdout.split()[-1])

    assert free_heap_bytes("eager") < 48 << 20 <= free_heap_bytes("compiled")
    assert free_heap_bytes("compiled", KALE_FAST_KEEP_FREED_HEAP="0") < 48 << 20  # the opt-out
