"""The whole-network benchmark's CPU smoke mode (bench/network/bench_network.py --dry-run), so it cannot rot."""

from __future__ import annotations

import csv
import importlib.util
import pathlib
import types

import pytest

pytest.importorskip("torch", reason="the network benchmark needs PyTorch")
pytest.importorskip("timm", reason="the network benchmark needs timm")

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "bench" / "network" / "bench_network.py"


def _load() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("bench_network", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_writes_csv_and_markdown(tmp_path: pathlib.Path) -> None:
    bench = _load()
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--dry-run", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = list(csv.DictReader((tmp_path / "network.csv").open()))
    assert [r["network"] for r in rows] == ["stock", "converted", "static"]
    assert all(float(r["median_ms"]) > 0 for r in rows)
    assert float(rows[1]["max_rel_diff"]) <= 1e-5
    md = (tmp_path / "network.md").read_text()
    assert "DRY RUN" in md
    assert "| f32 | 1 | eager |" in md


def test_dry_run_train_step(tmp_path: pathlib.Path) -> None:
    """--modes train: a training step of each network on the CPU; the converted network's gradients (the library's
    CPU backward) within 1e-3 of stock timm's."""
    bench = _load()
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--dry-run", "--modes", "train", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = list(csv.DictReader((tmp_path / "network.csv").open()))
    assert [(r["network"], r["mode"]) for r in rows] == [(n, "train") for n in ("stock", "converted", "static")]
    assert all(float(r["median_ms"]) > 0 for r in rows)
    assert float(rows[1]["max_rel_diff"]) <= 1e-3
    assert "| f32 | 2 | train |" in (tmp_path / "network.md").read_text()


def test_order_of_value_puts_targets_first() -> None:
    bench = _load()
    order = bench.order_of_value([1, 32, 128], ["f32", "tf32", "f16", "bf16"])
    assert order[:4] == [(128, "tf32"), (128, "f16"), (32, "tf32"), (32, "f16")]
    assert len(order) == 12


def test_without_gpu_exits_77(tmp_path: pathlib.Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the no-GPU notice does not apply")
    assert _load().main(["--out", str(tmp_path)]) == 77
