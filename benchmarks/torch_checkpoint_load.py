"""Reading PyTorch checkpoints with minires.load_torch (no PyTorch, no pickle code run) vs torch.load.

Writes a ResNet-56 and a ResNet-110 checkpoint the way akamaster/pytorch_resnet_cifar10 saves them
(``{"state_dict": DataParallel(net).state_dict(), "best_prec1": ...}``, random weights) in both
``torch.save`` formats to a temporary folder, then prints the median time of ``minires.load_torch`` and
of ``torch.load(weights_only=True)`` (zip; the legacy format cannot be read with weights_only, so
``weights_only=False`` there) and checks both give the same arrays. Needs torch (only to write the files
and for the comparison).

    python benchmarks/torch_checkpoint_load.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from conv_layers import median_ms  # noqa: E402 - benchmarks/conv_layers.py, beside this script

import minires as mr  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    try:
        import torch
        from test_cifar_checkpoint import random_net, save_like_akamaster
    except ImportError as exc:
        raise SystemExit(f"this benchmark needs torch to write the checkpoints ({exc})") from None
    print(f"{'file':<28} {'MB':>6} {'minires.load_torch':>19} {'torch.load':>11} {'torch/minires':>14}")
    with tempfile.TemporaryDirectory() as folder:
        for depth in (56, 110):
            net = random_net(depth).float()
            legacy = save_like_akamaster(net, os.path.join(folder, f"resnet{depth}.th"))
            zipped = os.path.join(folder, f"resnet{depth}.pt")
            torch.save({"state_dict": torch.nn.DataParallel(net).state_dict(), "best_prec1": 93.0}, zipped)
            for path, weights_only in ((legacy, False), (zipped, True)):
                ours = mr.load_torch(path)["state_dict"]
                theirs = torch.load(path, weights_only=weights_only)["state_dict"]
                assert all(np.array_equal(ours[k], theirs[k].numpy()) for k in theirs), path
                t_ours = median_ms(lambda p=path: mr.load_torch(p), args.repeats)
                t_torch = median_ms(lambda p=path, w=weights_only: torch.load(p, weights_only=w), args.repeats)
                name = os.path.basename(path) + (" (legacy)" if path == legacy else " (zip)")
                print(f"{name:<28} {os.path.getsize(path) / 1e6:>6.1f} {t_ours:>16.1f} ms {t_torch:>8.1f} ms "
                      f"{t_torch / t_ours:>14.2f}")


if __name__ == "__main__":
    main()
