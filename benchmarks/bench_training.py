"""Training throughput: the ONNX-converted module vs the same network written in torch.

LeNet-5 (`evonnx.retrain.demo.LeNet5`) on the built-in MNIST subset: the native module and the
`OnnxModule` built from its ONNX export train with the same loop (`evonnx.retrain.train`),
data, batch size and seed, alternating epochs in one process (goal: ratio >= 0.9).

Run: ``python benchmarks/bench_training.py``; results go to docs/benchmarks.md (``training``).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import machine, update_section

from evonnx.converters import to_torch
from evonnx.data import load_builtin
from evonnx.retrain import TrainConfig, train
from evonnx.retrain.demo import LeNet5, export_onnx

ROUNDS = 5
BATCHES = (32, 128)


def main() -> None:
    data = load_builtin("mnist-demo")
    torch.manual_seed(0)
    native = LeNet5()
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(native, (1, 28, 28), Path(tmp) / "lenet5.onnx")
        converted = to_torch(onnx.load(str(path)))
    rows = []
    for threads in (1, 2):
        for batch in BATCHES:
            config = TrainConfig(epochs=1, batch_size=batch, lr=0.01, seed=0, num_threads=threads)
            speed: dict[str, list[float]] = {"native": [], "converted": []}
            for _ in range(ROUNDS):
                for name, module in (("native", native), ("converted", converted)):
                    result = train(module, data, config, progress=False)
                    speed[name].append(result.images_per_second)
            nat, conv = max(speed["native"]), max(speed["converted"])
            rows.append(
                f"| {threads} | {batch} | {nat:,.0f} | {conv:,.0f} | **{conv / nat:.2f}** |"
            )
            print(rows[-1], flush=True)
    body = f"""## Training throughput of the converted module (`benchmarks/bench_training.py`)

LeNet-5 on the 4,000 training images of the built-in MNIST subset, SGD, one epoch per
measurement; native torch module and `OnnxModule` (built from its ONNX export) alternate, best
of {ROUNDS} epochs each, on {machine()} (goal: ratio >= 0.9).

| torch threads | batch | native img/s | converted img/s | ratio |
| --- | --- | --- | --- | --- |
{chr(10).join(rows)}
"""
    update_section("training", body)
    print(body)


if __name__ == "__main__":
    main()
