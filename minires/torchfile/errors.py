"""The errors of the PyTorch-file reader; both are ValueErrors whose message names the file."""

from __future__ import annotations

import pickle


class TorchFileError(ValueError):
    """A file is not a readable PyTorch checkpoint: truncated, corrupt, or of a kind minires does not read."""


class UnsafeTorchPickleError(TorchFileError, pickle.UnpicklingError):
    """The file's pickle asked for something a weights file never holds (a global such as ``os.system``);
    refused before any of it ran."""
