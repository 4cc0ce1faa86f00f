"""matplotlib, imported only when a figure is drawn, through its object API (no pyplot, no backend switch)."""

from __future__ import annotations

from typing import Any


def new_figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (7, 4)) -> tuple[Any, Any]:
    """A matplotlib ``(Figure, axes)`` that saves to files without touching the interactive backend."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("minires.viz plots need matplotlib: pip install matplotlib (or pip install 'minires[plot]')") from exc
    fig = Figure(figsize=figsize)
    axes = fig.subplots(nrows, ncols)
    return fig, axes
