"""Small real inputs for the quantize tests: a learnable synthetic face set written as a FER2013 CSV, real
FER2013 rows from ../shared, and tiny teachers trained here and saved in every format the tool loads.
Test modules import it after pytest.importorskip("torch").

Synthetic classes are horizontal stripes of seven frequencies (1.5 to 14 cycles per face, each 1.45x the last)
with random phase and noise: mirror-invariant like expressions, and still apart under the training
augmentation (+-15% zoom, +-10 degrees), so a student can learn them in a few epochs.
"""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from quantize.archs import build_arch
from quantize.datasets import load_dataset, stratified_split

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FER_CSV = SHARED / "data" / "fer2013" / "fer2013.csv.gz"
LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
SIX_LABELS = [name for name in LABELS if name != "disgust"]
# A FER+ vote file's header (quantize.ferplus).
VOTE_HEADER = "usage,row,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"


def synthetic_faces(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (N, 48, 48), int64 labels) with `per_class` faces of each of the 7 classes, shuffled."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(7), per_class)
    rng.shuffle(labels)
    y = np.arange(48, dtype=np.float32)[None, :, None]
    freq = (1.5 * 1.45**labels)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, (len(labels), 1, 1))
    stripes = 128 + 55 * np.cos(2 * np.pi * freq * y / 48 + phase)
    images = stripes + rng.normal(0, 12, (len(labels), 48, 48))
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


def write_fer_csv(path: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """A FER2013-layout CSV (gzip when the name ends .gz): emotion,pixels,Usage."""
    rows = ["emotion,pixels,Usage"]
    for usage, (images, labels) in splits.items():
        rows += [f"{label},{' '.join(map(str, image.ravel()))},{usage}" for image, label in zip(images, labels)]
    data = ("\n".join(rows) + "\n").encode()
    path.write_bytes(gzip.compress(data, compresslevel=1) if path.suffix == ".gz" else data)
    return path


def real_fer_rows(train: int, test: int, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A stratified sample of real FER2013 Training and PublicTest rows (callers skip without ../shared)."""
    out = {}
    for split, usage, count in (("train", "Training", train), ("test", "PublicTest", test)):
        faces = load_dataset(FER_CSV, split)
        sample = stratified_split(faces, count / len(faces), seed)[1]
        out[usage] = (sample.images, sample.labels)
    return out


def train_tiny_teacher(images: np.ndarray, labels: np.ndarray, steps: int = 60, seed: int = 0) -> nn.Module:
    """A small CNN (1x48x48 grey, mean/std 0.5) trained briefly on the faces: a real, if weak, teacher."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 5, 2, 2),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, 2, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 7),
    )
    x = (torch.from_numpy(images).float().unsqueeze(1) / 255 - 0.5) / 0.5
    y = torch.from_numpy(labels)
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def save_teachers(folder: Path, tiny: nn.Module) -> dict[str, Path]:
    """The tiny teacher as TorchScript (7 classes) and ONNX (6 classes, no disgust), plus a randomly initialised
    torchvision-layout ResNet-18 state_dict; each with the spec file the tool reads beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    grey_half = {"size": 48, "channels": 1, "mean": "half", "std": "half"}
    paths = {"torchscript": folder / "tiny7.pt", "onnx": folder / "tiny6.onnx", "state_dict": folder / "rn18.pt"}

    with warnings.catch_warnings():  # both formats are deprecated in torch, and still what users hand us
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.trace(tiny, torch.zeros(1, 1, 48, 48)).save(str(paths["torchscript"]))
        keep = [LABELS.index(name) for name in SIX_LABELS]
        six = nn.Sequential(tiny, Columns(keep)).eval()
        torch.onnx.export(
            six,
            (torch.zeros(1, 1, 48, 48),),
            str(paths["onnx"]),
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
            opset_version=17,
        )
    _spec(paths["torchscript"], {"labels": "fer2013", "input": grey_half})
    _spec(paths["onnx"], {"labels": SIX_LABELS, "input": {"mean": "half", "std": "half"}})

    torch.manual_seed(1)
    torch.save(build_arch("resnet18", 7).state_dict(), paths["state_dict"])
    _spec(paths["state_dict"], {"input": {"size": 48, "channels": 3, "mean": "imagenet"}})
    return paths


class Columns(nn.Module):
    """Keeps some output columns (a six-class teacher made from a seven-class one)."""

    def __init__(self, keep: list[int]) -> None:
        super().__init__()
        self.register_buffer("keep", torch.tensor(keep))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.keep)


def _spec(model_path: Path, spec: dict) -> None:
    model_path.with_suffix(".json").write_text(json.dumps(spec))
