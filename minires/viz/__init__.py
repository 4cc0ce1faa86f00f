"""Tools to *see* backprop: graph pictures, gradient flow by depth, and skip-connection probes.

- :func:`to_dot` / :func:`render` -- the autograd graph behind any output, skip connections marked.
- :class:`GradientFlowRecorder` / :func:`plot_gradient_flow` -- per-layer gradient norms during backward.
- :class:`SkipProbe` -- per residual block, the gradient reaching the block input through the
  identity path and through the residual branch (dL/dx = dL/dy + dL/dy . dF/dx).
"""

from minires.viz.gradflow import GradientFlowRecorder, LayerGradient, plot_gradient_flow
from minires.viz.graph import GraphvizNotFoundWarning, RenderResult, SkipJoin, param_names, render, to_dot
from minires.viz.skip_probe import SkipProbe, SkipRecord, format_skip_table

__all__ = [
    "GradientFlowRecorder",
    "GraphvizNotFoundWarning",
    "LayerGradient",
    "RenderResult",
    "SkipJoin",
    "SkipProbe",
    "SkipRecord",
    "format_skip_table",
    "param_names",
    "plot_gradient_flow",
    "render",
    "to_dot",
]
