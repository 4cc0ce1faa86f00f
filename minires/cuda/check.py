"""``python -m minires.cuda.check``: check minires on this GPU in one command, and write a report to send back.

It runs, in order, and prints one verdict table:

1. **kernels**: every fast CUDA kernel's first-use self-check (compile + compare with the generic path),
   for float16, float32 and float64;
2. **gpu tests**: the test suite's device subset under ``MINIRES_TEST_DEVICE=cuda`` (``pytest -m device``;
   needs a source checkout, i.e. the ``tests/`` folder next to the ``minires`` package);
3. **training**: a short ResNet-20 run on CIFAR-shaped random data (a fixed set of images and labels it
   can memorise); the loss must fall;
4. **benchmark**: ``benchmarks/gpu_resnet.py`` for ResNet-20 and ResNet-18 at batch 128, float32 and
   mixed precision, against PyTorch + cuDNN when torch is installed (figures, no verdict).

The JSON report (``--report``, default ``minires-gpu-report.json``) holds the machine, versions, every
verdict and figure. Without a usable GPU it says so, still writes the report, and exits 2; a failed check
exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

NO_GPU_EXIT = 2
FAILED_EXIT = 1
SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the checkout holding minires/, tests/ and benchmarks/


def gpu_info() -> tuple[dict[str, Any] | None, str]:
    """(facts about GPU 0, "") when CuPy sees a GPU, else (None, why not)."""
    from minires.backend import CUPY_INSTALL_HINT

    try:
        import cupy
    except ImportError as exc:
        return None, f"CuPy is not installed ({exc}). {CUPY_INSTALL_HINT}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError without a driver
        return None, f"CuPy is installed but finds no usable CUDA driver or device ({type(exc).__name__}: {exc})"
    if count < 1:
        return None, "CuPy is installed but finds no CUDA device"
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"]
    return {
        "name": name.decode() if isinstance(name, bytes) else str(name),
        "compute_capability": f"{props['major']}.{props['minor']}",
        "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
        "devices": count,
        "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
        "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
        "cupy": cupy.__version__,
    }, ""


def environment() -> dict[str, Any]:
    """Versions of what the report depends on (torch only if installed; never imported by minires itself)."""
    import importlib.metadata as md

    import minires

    versions = {"python": platform.python_version(), "numpy": np.__version__, "minires": getattr(minires, "__version__", "?")}
    for package in ("torch", "torchvision"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    versions["platform"] = platform.platform()
    return versions


def _row(check: str, verdict: str, detail: str, **figures: Any) -> dict[str, Any]:
    return {"check": check, "verdict": verdict, "detail": detail, "figures": figures}


def check_kernels(device: str = "cuda") -> list[dict[str, Any]]:
    """One row per kernel family and dtype: the first-use self-check's verdict."""
    import warnings

    from minires.ops.cuda import selfcheck, sources

    rows = []
    for family in selfcheck.CHECKS:
        for dtype, *_ in sources.DTYPES:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", selfcheck.FastKernelWarning)  # the row carries the cause
                ok = selfcheck.passed(family, dtype, device)
            detail = selfcheck.results()[(family, dtype, device)][1]
            rows.append(_row(f"kernel {family} {dtype}", "pass" if ok else "fail", detail))
    return rows


def _pytest_counts(output: str) -> dict[str, int]:
    """{"passed": 12, "skipped": 3, ...} from pytest's last summary line."""
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)", output)}


def _env_with_root(root: Path, **extra: str) -> dict[str, str]:
    """os.environ with ``root`` first on PYTHONPATH (so subprocesses import this checkout's minires)."""
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, **extra)


def run_gpu_tests(root: Path = SOURCE_ROOT, timeout: float = 1800) -> dict[str, Any]:
    """The suite's device subset under MINIRES_TEST_DEVICE=cuda, in a subprocess."""
    if not (root / "tests" / "conftest.py").is_file():
        return _row("gpu tests", "not run", f"no tests/ folder under {root}: run from a source checkout of minires")
    env = _env_with_root(root, MINIRES_TEST_DEVICE="cuda")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "device", str(root / "tests")]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    counts = _pytest_counts(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "")
    ok = done.returncode == 0 and counts.get("passed", 0) > 0
    tail = "\n".join(done.stdout.strip().splitlines()[-30:])
    return _row("gpu tests", "pass" if ok else "fail", f"pytest -m device exit {done.returncode}: {counts}",
                seconds=round(time.perf_counter() - start, 1), output_tail=tail, **counts)


def train_resnet20(
    device: str = "cuda", steps: int = 60, batch: int = 128, images: int = 256, image_size: int = 32, seed: int = 0
) -> dict[str, Any]:
    """SGD on a fixed set of random CIFAR-shaped images with random labels: the net can memorise them, so
    the loss must fall. Passes when the mean of the last 5 losses is below 0.7x the first 5 and finite.
    ``images`` must be a multiple of ``batch`` (the batches cycle through the set)."""
    if images % batch:
        raise ValueError(f"train_resnet20: images ({images}) must be a multiple of batch ({batch})")
    import minires as mr
    import minires.nn.functional as F
    from minires import optim
    from minires.models import resnet20

    mr.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = mr.tensor(rng.normal(size=(images, 3, image_size, image_size)).astype(np.float32), device=device)
    labels = mr.tensor(rng.integers(0, 10, images), device=device)
    model = resnet20(num_classes=10).to(device)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    start = time.perf_counter()
    for step in range(steps):
        at = (step * batch) % images
        opt.zero_grad()
        loss = F.cross_entropy(model(data[at : at + batch]), labels[at : at + batch])
        loss.backward()
        opt.step()
        losses.append(float(loss.item()))
    seconds = time.perf_counter() - start
    first, last = float(np.mean(losses[:5])), float(np.mean(losses[-5:]))
    ok = bool(np.isfinite(losses).all()) and last < 0.7 * first
    return _row("training resnet20", "pass" if ok else "fail", f"loss {first:.3f} -> {last:.3f} over {steps} steps of batch {batch}",
                first_loss=first, last_loss=last, losses=losses, img_per_s=round(steps * batch / seconds, 1))


def run_benchmark(root: Path = SOURCE_ROOT, timeout: float = 1800) -> list[dict[str, Any]]:
    """benchmarks/gpu_resnet.py (ResNet-20 and ResNet-18, batch 128, fp32 and AMP) in a subprocess."""
    script = root / "benchmarks" / "gpu_resnet.py"
    if not script.is_file():
        return [_row("benchmark", "not run", f"no {script}: run from a source checkout of minires")]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [sys.executable, str(script), "--models", "resnet20", "resnet18", "--batches", "128", "--json", str(out)]
        done = subprocess.run(cmd, cwd=root, env=_env_with_root(root), capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0 or not out.is_file():
            return [_row("benchmark", "fail", f"gpu_resnet.py exit {done.returncode}: {done.stderr.strip()[-2000:]}")]
        results = json.loads(out.read_text())
    rows = []
    for r in results:
        measured = r.get("torch_img_s")
        torch_part = f", torch {r['torch_img_s']:.0f} img/s, ratio {r['ratio']:.2f}" if measured else ", torch not measured"
        rows.append(_row(f"benchmark {r['model']} b{r['batch']} {r['precision']}", "measured",
                         f"minires {r['minires_img_s']:.0f} img/s{torch_part}", **r))
    return rows


def render_table(rows: list[dict[str, Any]]) -> str:
    """The verdict table: one line per check."""
    width = max([len(r["check"]) for r in rows] + [5])
    lines = [f"{'check':<{width}}  {'verdict':<8}  detail", "-" * (width + 40)]
    for r in rows:
        detail = r["detail"].splitlines()[0] if r["detail"] else ""
        lines.append(f"{r['check']:<{width}}  {r['verdict']:<8}  {detail[:160]}")
    return "\n".join(lines)


def write_report(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return n


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m minires.cuda.check", description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, default=Path("minires-gpu-report.json"), help="where to write the JSON report")
    parser.add_argument("--train-steps", type=_positive, default=60, help="ResNet-20 training steps (batch 128)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the GPU test subset")
    parser.add_argument("--skip-benchmark", action="store_true", help="do not run benchmarks/gpu_resnet.py")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info, reason = gpu_info()
    report: dict[str, Any] = {"environment": environment(), "gpu": info, "rows": []}
    if info is None:
        message = (f"minires.cuda.check: no usable CUDA GPU here, so nothing was checked. {reason}\n"
                   "Run this command on a machine with an NVIDIA GPU and CuPy installed.")
        print(message, file=sys.stderr)
        report["verdict"] = "no gpu"
        report["reason"] = reason
        write_report(args.report, report)
        return NO_GPU_EXIT
    print(f"GPU: {info['name']} (compute {info['compute_capability']}, {info['memory_gib']} GiB), CuPy {info['cupy']}, "
          f"CUDA runtime {info['cuda_runtime']}, driver {info['cuda_driver']}")
    rows = report["rows"]
    steps = [("kernels", check_kernels), ("training", lambda: [train_resnet20(steps=args.train_steps)])]
    if not args.skip_tests:
        steps.insert(1, ("gpu tests", lambda: [run_gpu_tests()]))
    if not args.skip_benchmark:
        steps.append(("benchmark", run_benchmark))
    for name, step in steps:
        print(f"... {name}", flush=True)
        try:
            rows.extend(step())
        except Exception as exc:  # one broken step must not hide the others' results
            rows.append(_row(name, "fail", f"{type(exc).__name__}: {exc}"))
        write_report(args.report, report)  # after every step, so a crash still leaves the figures so far
    failed = [r["check"] for r in rows if r["verdict"] == "fail"]
    report["verdict"] = "fail" if failed else "pass"
    write_report(args.report, report)
    print(render_table(rows))
    print(f"\nverdict: {report['verdict'].upper()}" + (f" ({', '.join(failed)})" if failed else ""))
    print(f"report written to {args.report}: please send it back (an issue or the project's contact), whatever the verdict.")
    return FAILED_EXIT if failed else 0


if __name__ == "__main__":
    sys.exit(main())
