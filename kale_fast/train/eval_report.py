"""What evaluation shows people: its figures (metric-vs-steps.png, samples.png, energy.png) and the few lines of
summary_text that `kale-fast eval` and `train` print; summary.json holds every number (train/evaluate.py)."""
import math
from pathlib import Path

from torch import Tensor

from kale_fast.train.plots import energy_landscape, metric_vs_steps, scatter_samples
from kale_fast.train.run_folder import SUMMARY

CURVES_FIGURE = "metric-vs-steps.png"


def write_figures(summary: dict, grid, metric_name: str, selected, test: Tensor, test_reference: Tensor,
                       base_samples: Tensor, selected_samples: Tensor, gebm, images: bool, run_dir: Path) -> None:
    """metric-vs-steps.png (binomial error bars on shares); samples.png (vectors: each set's scores in its title,
    the verdict under them); energy.png (2-D data: the data over it, the clamped region marked)."""
    curves = summary["curves"][metric_name]
    errors = ({name: [math.sqrt(max(p * (1 - p), 0.0) / summary["n_validation"]) for p in values]
               for name, values in curves.items()} if metric_name == "high_quality" else None)
    metric_vs_steps(grid, curves, run_dir / CURVES_FIGURE,
                    {"mmd": "MMD^2 (lower is better)", "high_quality": "share within 3 sd of a mode (higher is better)"
                     }.get(metric_name, metric_name.replace("_", "-").upper()),
                    (selected.sampler, selected.steps), errors)
    if not images:
        scores = lambda label: (f": {summary[f'modes_{label}']['high_quality']:.1%} within 3 sd of a mode"  # noqa: E731
                                if f"modes_{label}" in summary else f": MMD^2 {summary[f'mmd_{label}']:.2g}")
        scatter_samples({"held-out data": test_reference, f"base samples{scores('base')}": base_samples,
                         f"GEBM ({selected.sampler}, {selected.steps} steps){scores('selected')}": selected_samples},
                        run_dir / "samples.png", caption=summary.get("verdict", {}).get("text"))
    if test.dim() == 2 and test.shape[1] == 2:
        energy_landscape(gebm.energies, test_reference, run_dir / "energy.png",
                         floor=getattr(gebm.energy, "floor", None))


def summary_text(summary: dict, run_dir) -> str:
    """A few lines for people: what was chosen, the headline numbers of base and GEBM, the verdict, the files."""
    split = ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in summary["eval_time_split_s"].items())
    lines = [f"evaluated {run_dir} in {summary['eval_time_s']:.0f} s ({split}): {summary['dataset']}, round "
             f"{summary['rounds']}, {summary['n_eval']} samples against {summary['n_test_total']} test points"]
    if "evaluated" in summary:
        lines.append(f"  {summary['evaluated']}")
    if "selected" in summary:
        chosen = summary["selected"]
        lines.append(f"  chosen on validation data: {chosen['sampler']}, {chosen['steps']} MCMC steps "
                     f"({chosen['metric']} {chosen['validation_value']:.4g})")
    if "modes_base" in summary:
        share = lambda m: f"{m['high_quality']:.1%} ({m['modes_covered']} of {m['n_modes']} modes)"  # noqa: E731
        lines.append(f"  within 3 sd of a mode: base {share(summary['modes_base'])}, GEBM "
                     f"{share(summary['modes_selected'])}")
    if "mmd_base" in summary:
        gebm = f", GEBM {summary['mmd_selected']:.3g}" if "mmd_selected" in summary else ""
        lines.append(f"  MMD^2 to test data: base {summary['mmd_base']:.3g}{gebm}")
    if "nll_base" in summary:
        gebm = (f", GEBM {summary['nll_gebm']:.3f} +- {summary['nll_gebm_se']:.2g}" if "nll_gebm" in summary
                else "")
        lines.append(f"  test NLL (nats): base {summary['nll_base']:.3f} +- {summary['nll_base_se']:.2g}{gebm}, "
                     f"a Gaussian {summary['nll_gaussian']:.3f}")
    if "verdict" in summary:
        lines.append(f"  {summary['verdict']['text']}")
    written = [SUMMARY] + [name for name in ("samples.png", "images.png", "energy.png", CURVES_FIGURE,
                                             "training.png") if (Path(run_dir) / name).exists()]
    lines.append(f"  written to {run_dir}: {', '.join(written)} ({SUMMARY} holds every number)")
    return "\n".join(lines)
