"""CUDA-graph replay of sampler steps (`run(..., cuda_graph=True)`): one step (the potential's forward and
backward, the fused updates, the random draws) captured over static buffers, then replayed.

A step's launch sequence depends on its leapfrog count (ChEES varies it) and on whether warm-up reads its
report, so one graph is captured per (n_leapfrog, adapting) seen, all in one memory pool. Step sizes are copied
into their static buffer before each replay, so warm-up adaptation works as in eager mode; the run's generator
is registered with every graph, so replays draw fresh numbers.
"""
import warnings
from typing import Callable, Dict, Tuple

import torch

from kale_fast.samplers.core import StepParams


def _clone(state):
    return type(state)(*(t.clone() for t in state))


class CapturedSteps:
    """`step(state, params) -> (state, transition)` of a sampler, replayed from CUDA graphs. The returned
    state and transition are static buffers, overwritten by the next replay."""

    def __init__(self, step: Callable, state, step_size: torch.Tensor, generator: torch.Generator):
        self.step, self.generator = step, generator
        self.static_state = _clone(state)
        self.static_step_size = step_size.clone()
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: Dict[Tuple[int, bool], Tuple[torch.cuda.CUDAGraph, object]] = {}
        self.failed = False

    def _capture(self, params: StepParams):
        graph = torch.cuda.CUDAGraph()
        if hasattr(graph, "register_generator_state"):
            graph.register_generator_state(self.generator)
        static_params = params._replace(step_size=self.static_step_size)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph (allocator, cuBLAS handles, Triton compiles)
            for _ in range(2):
                self.step(_clone(self.static_state), static_params)
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph, pool=self.pool):
            new_state, transition = self.step(self.static_state, static_params)
            for target, value in zip(self.static_state, new_state):
                target.copy_(value)
        return graph, transition

    def __call__(self, state, params: StepParams):
        if self.failed:
            return self.step(state, params)
        key = (params.n_leapfrog, params.adapting)
        if key not in self.graphs:
            try:
                self.graphs[key] = self._capture(params)
            except Exception as error:  # capture is impossible for this potential: say so and go on eagerly
                warnings.warn(f"CUDA-graph capture failed, running the steps eagerly: {error}", stacklevel=3)
                self.failed = True
                return self.step(state, params)
        graph, transition = self.graphs[key]
        if state is not self.static_state:
            for target, value in zip(self.static_state, state):
                target.copy_(value)
        self.static_step_size.copy_(params.step_size)
        graph.replay()
        return self.static_state, transition
