"""Command lines: ``minires-train`` (also ``python -m minires.train``) and ``minires-eval``."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from typing import Any, Callable, Sequence

from minires.data import DATASETS
from minires.serialization import load_tree
from minires.torchfile import is_torch_file
from minires.training.checkpoint import CHECKPOINT, load_checkpoint, read_checkpoint_config
from minires.training.config import RUN_LOCAL, TrainConfig
from minires.training.distributed import exit_code
from minires.training.evaluate import evaluate
from minires.training.loaders import build_evaluation
from minires.training.recipes import MODEL_NAMES, RECIPES
from minires.training.torch_eval import evaluate_torch_checkpoint
from minires.training.trainer import NonFiniteLossError, Trainer


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" only where there is a default worth showing (not None, not an on/off switch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return action.help or ""
        return super()._get_help_string(action) or ""


def _number(kind: Callable[[str], Any], low: float, inclusive: bool, what: str) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)``, finite and above ``low`` (or at it when ``inclusive``)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


_POSITIVE_INT = _number(int, 0, False, "a positive integer")
_NON_NEGATIVE_INT = _number(int, 0, True, "an integer >= 0")
_POSITIVE_FLOAT = _number(float, 0.0, False, "a positive finite number")
_NON_NEGATIVE_FLOAT = _number(float, 0.0, True, "a finite number >= 0")


def _fraction(text: str) -> float:
    value = _NON_NEGATIVE_FLOAT(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="minires-train",
        description="Train a small ResNet with minires. With no arguments: a ResNet-20 on the handwritten digits "
        "that ship with scikit-learn (no download).",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--data-dir", help="CIFAR folder (cifar-10-batches-py / cifar-100-python), its parent, or the .tar.gz")
    p.add_argument("--model", choices=MODEL_NAMES, help="default: the data set's recipe (" +
                   ", ".join(f"{k}: {r.model}" for k, r in RECIPES.items()) + ")")
    p.add_argument("--plain", action="store_true", help="the same network without skip connections")
    p.add_argument("--preact", action="store_true", help="pre-activation residual blocks")
    p.add_argument("--epochs", type=_POSITIVE_INT, help="train up to this epoch (default: the recipe's)")
    p.add_argument("--batch-size", type=_POSITIVE_INT,
                   help="images per step per process: under mpiexec -n N the global batch is N x this")
    p.add_argument("--lr", type=_POSITIVE_FLOAT, help="peak learning rate")
    p.add_argument("--optimizer", choices=("sgd", "adam", "adamw"))
    p.add_argument("--momentum", type=_NON_NEGATIVE_FLOAT, default=0.9, help="SGD momentum (Nesterov)")
    p.add_argument("--schedule", choices=("cosine", "onecycle", "step", "constant"))
    p.add_argument("--warmup-epochs", type=_NON_NEGATIVE_FLOAT, help="linear warm-up length (not with onecycle)")
    p.add_argument("--weight-decay", type=_NON_NEGATIVE_FLOAT)
    p.add_argument("--label-smoothing", type=_fraction, default=0.0)
    p.add_argument("--clip-grad-norm", type=_POSITIVE_FLOAT, help="clip the global gradient norm to this value")
    p.add_argument("--train-subset", type=_POSITIVE_INT, metavar="N", help="train on a fixed random N-image part of the training set")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no random crops or flips")
    p.add_argument("--no-sync-bn", dest="sync_bn", action="store_false",
                   help="under mpiexec: BatchNorm statistics per process instead of over the global batch")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--seed", type=_NON_NEGATIVE_INT, default=0)
    p.add_argument("--out", help="output folder (default: runs/<timestamp>)")
    p.add_argument("--resume", metavar="CHECKPOINT", help="continue from a checkpoint up to --epochs")
    p.add_argument("--eval-only", action="store_true", help="evaluate --resume's checkpoint instead of training")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.eval_only:
        if not args.resume:
            print("minires-train: --eval-only needs --resume CHECKPOINT", file=sys.stderr)
            return 2
        return eval_main(["--checkpoint", args.resume] + (["--data-dir", args.data_dir] if args.data_dir else [])
                         + ["--device", args.device])
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    settings = {k: v for k, v in vars(args).items() if k in fields}
    try:
        if args.resume:
            # The checkpoint's settings, with the flags given on this command line on top (Trainer.restore
            # refuses those that cannot change), so `--resume CKPT --epochs 30` continues the same run.
            unset = object()  # argparse fills in defaults only for names the namespace lacks
            parsed = _parser().parse_args(argv, namespace=argparse.Namespace(**{k: unset for k in vars(args)}))
            given = {k: v for k, v in vars(parsed).items() if k in fields and v is not unset}
            saved = read_checkpoint_config(args.resume)
            settings = {**{k: v for k, v in saved.items() if k in fields and k not in RUN_LOCAL}, **given}
            settings.update(progress=args.progress, out=args.out or os.path.dirname(os.path.abspath(args.resume)))
        elif args.out is not None and os.path.exists(os.path.join(args.out, CHECKPOINT)):
            raise ValueError(f"--out {args.out} already holds a run ({CHECKPOINT}); continue it with --resume "
                             f"{os.path.join(args.out, CHECKPOINT)}, or choose another --out (or delete that folder)")
        if settings.get("data_dir") and settings.get("dataset", "digits") == "digits":
            parser.error("argument --data-dir: the digits data set ships with scikit-learn and reads no folder; "
                         "--data-dir is for --dataset cifar10 / cifar100")
        config = TrainConfig(**settings)
        trainer = Trainer(config)
        reached = int(load_tree(args.resume, sections=["epoch"]).get("epoch", 0)) if args.resume else None
        records = trainer.fit(resume=args.resume)  # resuming: checks the checkpoint against the flags first
    except KeyboardInterrupt:
        return exit_code(130)
    except NonFiniteLossError as exc:
        print(f"minires-train: {exc}", file=sys.stderr)
        return exit_code(1)
    except (FileNotFoundError, ValueError) as exc:
        print(f"minires-train: {exc}", file=sys.stderr)
        return exit_code(2)  # under mpiexec: ends the other ranks too
    if reached is not None and trainer.epoch <= reached:
        print(f"minires-train: nothing to train: {args.resume} is already at epoch {reached}, and --epochs is "
              f"{trainer.config.epochs}; pass a larger --epochs to continue the run")
        return 0
    if records:
        best = max(r["test_acc"] for r in records)
        print(f"done: final test accuracy {100 * records[-1]['test_acc']:.2f}% (best {100 * best:.2f}%), "
              f"checkpoint {os.path.join(trainer.config.out, CHECKPOINT)}")
    return 0


def eval_main(argv: Sequence[str] | None = None) -> int:
    """``minires-eval --checkpoint PATH``: test accuracy, per-class accuracy and confusion matrix."""
    p = argparse.ArgumentParser(prog="minires-eval", description="Evaluate a minires-train checkpoint, or a PyTorch "
                                "CIFAR-ResNet checkpoint (.th/.pt, read without PyTorch), on its test set.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-dir", help="override the data folder recorded in the checkpoint (required for a PyTorch file)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--model", help="PyTorch file only: the CIFAR ResNet it holds (resnet20 ... resnet1202), checked against it")
    args = p.parse_args(argv)
    try:
        if is_torch_file(args.checkpoint):
            try:
                print(evaluate_torch_checkpoint(args.checkpoint, args.model, args.data_dir, args.device))
            except (FileNotFoundError, ValueError, RuntimeError) as exc:
                print(f"minires-eval: {exc}", file=sys.stderr)
                return 2
            return 0
        return _evaluate_checkpoint(args)
    except KeyboardInterrupt:
        print("minires-eval: interrupted", file=sys.stderr)
        return 130


def _evaluate_checkpoint(args: argparse.Namespace) -> int:
    try:
        ckpt = load_checkpoint(args.checkpoint)
        if "config" not in ckpt:
            raise ValueError(f"{args.checkpoint!r} has no 'config' section: not written by minires-train")
        saved = dict(ckpt["config"])
        if args.model and args.model != saved.get("model"):
            raise ValueError(f"--model {args.model}: {args.checkpoint!r} holds a {saved.get('model')} (--model is for PyTorch files)")
        saved.update(device=args.device, prefetch=0, progress=False, out=os.path.dirname(os.path.abspath(args.checkpoint)))
        if args.data_dir:
            saved["data_dir"] = args.data_dir
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        config = TrainConfig(**{k: v for k, v in saved.items() if k in fields})
        model, test_set, test_loader = build_evaluation(config)
        model.load_state_dict(ckpt["model"])
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"minires-eval: {exc}", file=sys.stderr)
        return 2
    result = evaluate(model, test_loader, test_set.num_classes)
    batches = (ckpt.get("partial") or {}).get("batches")
    when = f"after epoch {ckpt.get('epoch')}" + (f" and {batches} batches of the next (interrupted)" if batches else "")
    print(f"{config.model} on {config.dataset}, checkpoint {when}")
    print(result.report(list(test_set.classes) if test_set.classes else None))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
