"""Teachers of the offline tool: torchvision-layout architectures, checkpoint recognition, ONNX/TorchScript/PyTorch
loading with specs, and train-teacher (short real runs with resume)."""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
from torch import nn  # noqa: E402

from edge.contract import CANONICAL_LABELS, new_card  # noqa: E402
from quantize.archs import (  # noqa: E402
    ARCH_NAMES,
    build_arch,
    infer_from_state_dict,
    inspect_state_dict,
    model_from_state_dict,
    unwrap_checkpoint,
)
from quantize.cli_options import add_train_teacher_options  # noqa: E402
from quantize.commands import run_train_teacher  # noqa: E402
from quantize.datasets import load_dataset  # noqa: E402
from quantize.errors import QuantizeError  # noqa: E402
from quantize.teacher_augment import Augmentation  # noqa: E402
from quantize.teacher_input import Preprocessing, preprocessing_from_spec  # noqa: E402
from quantize.teacher_spec import parse_teacher_arg  # noqa: E402
from quantize.teachers import load_teacher  # noqa: E402
from quantize.train_teacher import train_teacher  # noqa: E402
from tests.tiny_model import write_tiny_model  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FER_CSV = SHARED / "data" / "fer2013" / "fer2013.csv.gz"
SHARED_TEACHER = SHARED / "teachers" / "resnet18_fer2013_96.pt"

# Derived from torchvision/models/resnet.py and densenet.py: state_dict entries (5 per BatchNorm incl.
# num_batches_tracked, 1 per bias-free conv, 2 for the classifier) and the parameter counts torchvision publishes
# for the 1000-class models, plus names and shapes that pin down the layout.
TORCHVISION = {
    "resnet18": (
        122,
        11_689_512,
        {"layer4.1.bn2.running_var": (512,), "layer2.0.downsample.0.weight": (128, 64, 1, 1), "fc.weight": (1000, 512)},
    ),
    "resnet34": (218, 21_797_672, {"layer3.5.conv2.weight": (256, 256, 3, 3), "fc.weight": (1000, 512)}),
    "resnet50": (
        320,
        25_557_032,
        {
            "layer1.0.downsample.1.num_batches_tracked": (),
            "layer4.2.conv3.weight": (2048, 512, 1, 1),
            "fc.weight": (1000, 2048),
        },
    ),
    "resnet101": (626, 44_549_160, {"layer3.22.conv2.weight": (256, 256, 3, 3)}),
    "resnet152": (
        932,
        60_192_808,
        {"layer2.7.bn3.weight": (512,), "layer3.35.conv3.weight": (1024, 256, 1, 1), "conv1.weight": (64, 3, 7, 7)},
    ),
    "densenet121": (
        727,
        7_978_856,
        {
            "features.denseblock1.denselayer1.norm1.weight": (64,),
            "features.transition3.conv.weight": (512, 1024, 1, 1),
            "features.norm5.running_mean": (1024,),
            "classifier.weight": (1000, 1024),
        },
    ),
    "densenet161": (
        967,
        28_681_000,
        {
            "features.conv0.weight": (96, 3, 7, 7),
            "features.denseblock4.denselayer24.conv2.weight": (48, 192, 3, 3),
            "classifier.weight": (1000, 2208),
        },
    ),
    "densenet169": (
        1015,
        14_149_480,
        {"features.denseblock3.denselayer32.conv1.weight": (128, 1248, 1, 1), "classifier.weight": (1000, 1664)},
    ),
    "densenet201": (
        1207,
        20_013_928,
        {"features.denseblock3.denselayer48.conv2.weight": (32, 128, 3, 3), "classifier.weight": (1000, 1920)},
    ),
}
LABELS_FER_PLUS = ["neutral", "happy", "surprise", "sad", "angry", "disgust", "fear"]
HEADS = ["linear", "dropout:0.2,linear", "linear:64,relu,dropout,linear"]


def _meta(arch: str, num_classes: int = 1000, head: str | None = None) -> nn.Module:
    with torch.device("meta"):  # layout only, no memory
        return build_arch(arch, num_classes, head)


def _faces(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 48, 48), dtype=np.uint8)


class TinyNet(nn.Module):
    """A non-torchvision architecture, as users export to ONNX or TorchScript."""

    def __init__(self, channels: int = 1, classes: int = 6) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_arch("resnet18", 7)
    # Non-trivial BatchNorm statistics, so a load that ignored them would change the outputs.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.state_dict()


def _write_spec(path: Path, spec: dict) -> None:
    path.write_text(json.dumps(spec))


# ---------------------------------------------------------------- architectures


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_architecture_has_torchvision_names_and_sizes(arch: str) -> None:
    keys, params, samples = TORCHVISION[arch]
    model = _meta(arch)
    sd = model.state_dict()
    assert len(sd) == keys
    assert sum(p.numel() for p in model.parameters()) == params
    for name, shape in samples.items():
        assert tuple(sd[name].shape) == shape, name
    assert infer_from_state_dict(sd) == (arch, "linear", 1000)


@pytest.mark.parametrize("arch", ["resnet152", "densenet161", "resnet101", "densenet169"])
@pytest.mark.parametrize("head", HEADS)
def test_big_architectures_are_recognised_with_any_head(arch: str, head: str) -> None:
    sd = _meta(arch, 7, head).state_dict()
    inferred_arch, inferred_head, classes = infer_from_state_dict(sd)
    assert (inferred_arch, classes) == (arch, 7)
    assert _meta(arch, 7, inferred_head).state_dict().keys() == sd.keys()


@pytest.mark.parametrize(
    ("arch", "head"), [("resnet18", h) for h in HEADS] + [("densenet121", h) for h in HEADS] + [("resnet50", HEADS[-1])]
)
def test_state_dict_round_trip_gives_the_same_outputs(tmp_path: Path, arch: str, head: str) -> None:
    torch.manual_seed(1)
    model = build_arch(arch, 7, head).eval()
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    loaded, info = model_from_state_dict(torch.load(path, weights_only=True))
    assert (info.arch, info.num_classes, info.in_channels) == (arch, 7, 3)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x))


def test_grey_input_and_cifar_stem_are_read_from_the_first_conv() -> None:
    model = build_arch("resnet34", 7, in_channels=1, stem="cifar")
    info = inspect_state_dict(model.state_dict())
    assert (info.arch, info.in_channels, info.stem) == ("resnet34", 1, "cifar")
    rebuilt, _ = model_from_state_dict(model.state_dict())
    assert rebuilt(torch.zeros(1, 1, 48, 48)).shape == (1, 7)


def test_checkpoint_wrappers_and_prefixes_are_removed(resnet18_state: dict) -> None:
    wrapped = [
        {"state_dict": {f"module.{k}": v for k, v in resnet18_state.items()}, "epoch": 3},
        {"model_state_dict": resnet18_state, "optimizer_state_dict": {"state": {}}},
        {"model": {f"model.{k}": v for k, v in resnet18_state.items()}},
        {"net": {f"_orig_mod.{k}": v for k, v in resnet18_state.items()}},
        {"weights": resnet18_state},
    ]
    for checkpoint in wrapped:
        sd = unwrap_checkpoint(checkpoint)
        assert sd.keys() == resnet18_state.keys()
        assert infer_from_state_dict(sd) == ("resnet18", "linear", 7)
    with pytest.raises(QuantizeError, match="holds no state_dict.*epoch"):
        unwrap_checkpoint({"epoch": 3, "best": 0.5})


def test_old_torchvision_densenet_key_spelling_loads() -> None:
    sd = _meta("densenet121", 7).state_dict()
    legacy = {k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v for k, v in sd.items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    assert unwrap_checkpoint(legacy).keys() == sd.keys()


def test_unknown_keys_name_what_is_missing_and_unexpected(resnet18_state: dict) -> None:
    broken = dict(resnet18_state)
    del broken["layer3.1.conv2.weight"]
    broken["extra.weight"] = torch.zeros(3)
    with pytest.raises(
        QuantizeError,
        match=r"does not match resnet18: missing layer3\.1\.conv2\.weight; "
        r"unexpected extra\.weight",
    ):
        model_from_state_dict(broken)
    foreign = {"encoder.conv.weight": torch.zeros(8, 3, 3, 3), "head.weight": torch.zeros(7, 8)}
    with pytest.raises(
        QuantizeError,
        match=r"matches no known architecture; closest is \w+: missing .*unexpected "
        r"encoder\.conv\.weight",
    ):
        model_from_state_dict(foreign)
    with pytest.raises(
        QuantizeError, match=r"the checkpoint holds resnet18 weights, not resnet34; give arch resnet18$"
    ):
        model_from_state_dict(resnet18_state, arch="resnet34")
    wide = dict(resnet18_state)
    wide["fc.weight"] = torch.zeros(7, 256)
    with pytest.raises(QuantizeError, match=r"size mismatch for fc\.weight"):
        model_from_state_dict(wide)


# ---------------------------------------------------------------- preprocessing and augmentation


def test_preprocessing_resizes_replicates_and_normalises() -> None:
    faces = _faces(2)
    pre = Preprocessing(size=(96, 96), channels=3, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    x = pre.apply(faces)
    assert x.shape == (2, 3, 96, 96) and x.dtype == torch.float32
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(faces).float().unsqueeze(1) / 255, size=96, mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(x[:, 1:2], (expected - 0.456) / 0.224)
    grey = preprocessing_from_spec({"shape": [1, 1, 48, 48], "mean": "imagenet"})
    assert grey.channels == 1 and grey.mean == [pytest.approx(0.449)]
    np.testing.assert_allclose(grey.apply_numpy(faces)[:, 0], (faces / 255 - 0.449) / 0.226, rtol=1e-5)
    with pytest.raises(QuantizeError, match="channels must be 1 or 3"):
        Preprocessing(channels=2)


def test_augmentation_at_zero_strength_is_the_evaluation_resize() -> None:
    faces = torch.from_numpy(_faces(4))
    still = Augmentation(
        zoom=(1.0, 1.0), aspect=0.0, rotate_deg=0.0, shift=0.0, flip=False, brightness=0.0, contrast=0.0, erase_p=0.0
    )
    pre = Preprocessing(size=(96, 96), channels=1)
    torch.testing.assert_close(
        pre.normalise(still(faces, (96, 96), torch.Generator())), pre.apply(faces), atol=1e-5, rtol=0
    )
    moved = Augmentation()(faces, (64, 64), torch.Generator().manual_seed(0))
    assert moved.shape == (4, 1, 64, 64) and 0.0 <= moved.min() and moved.max() <= 1.0
    assert not torch.allclose(moved, Preprocessing(size=(64, 64)).apply(faces))


# ---------------------------------------------------------------- teachers


@pytest.mark.skipif(
    not (SHARED_TEACHER.exists() and FER_CSV.exists()),
    reason=f"shared teacher or FER2013 CSV absent ({SHARED_TEACHER}, {FER_CSV})",
)
@pytest.mark.slow
def test_shared_teacher_loads_from_its_card_and_is_accurate(tmp_path: Path) -> None:
    rows = ["emotion,pixels,Usage"]
    with gzip.open(FER_CSV, "rt") as f:  # PublicTest rows follow the 28709 Training rows
        for line in f:
            if line.rstrip().endswith(",PublicTest"):
                rows.append(line.rstrip())
                if len(rows) > 300:
                    break
    (tmp_path / "public.csv").write_text("\n".join(rows) + "\n")
    faces = load_dataset(tmp_path / "public.csv", "test")
    teacher = load_teacher(SHARED_TEACHER)
    assert (teacher.arch, teacher.backend, teacher.labels) == ("resnet18", "torch", list(CANONICAL_LABELS))
    assert teacher.preprocessing.size == (96, 96) and teacher.preprocessing.channels == 3
    assert teacher.num_params == 11_180_103
    logits = teacher.logits(faces.images, flip_tta=True)
    accuracy = float((logits.argmax(1) == faces.labels).mean())
    assert accuracy >= 0.60, f"shared teacher top-1 {accuracy:.3f} on 300 PublicTest faces"


def _save_onnx(model: nn.Module, path: Path, shape: tuple[int, int, int, int], dynamic: bool = True) -> None:
    # The TorchScript-based exporter: quick and quiet for these tiny models; users' files come from either exporter.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model.eval(),
            (torch.zeros(shape),),
            str(path),
            input_names=["input"],
            output_names=["out"],
            dynamic_axes={"input": {0: "batch"}} if dynamic else None,
            dynamo=False,
        )


def test_onnx_six_class_teacher_gives_the_torch_logits(tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = TinyNet(channels=1, classes=6).eval()
    path = tmp_path / "six.onnx"
    _save_onnx(model, path, (1, 1, 40, 40))
    labels = ["Angry", "Fear", "Happy", "Neutral", "Sad", "Suprise"]
    _write_spec(tmp_path / "six.json", {"labels": labels, "input": {"mean": "half"}})
    teacher = load_teacher(path)
    assert teacher.backend == "onnx" and teacher.num_params is None
    assert teacher.label_index == [0, 2, 3, 6, 4, 5]
    assert teacher.preprocessing.size == (40, 40) and teacher.preprocessing.mean == [0.5]
    faces = _faces(5)
    with torch.no_grad():
        expected = model(teacher.preprocessing.apply(faces)).numpy()
        mirrored = model(teacher.preprocessing.apply(faces[:, :, ::-1])).numpy()
    np.testing.assert_allclose(teacher.logits(faces, batch_size=2), expected, atol=1e-4)
    np.testing.assert_allclose(teacher.logits(faces, flip_tta=True), (expected + mirrored) / 2, atol=1e-4)


def test_an_eight_class_fer_plus_teacher_teaches_the_seven_without_contempt(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = TinyNet(channels=1, classes=8).eval()
    path = tmp_path / "emotion-ferplus-8.onnx"  # the layout of the ONNX model zoo's FER+ model
    _save_onnx(model, path, (1, 1, 64, 64))
    teacher = load_teacher(f"{path}:labels={'/'.join(LABELS_FER_PLUS)}/contempt,mean=none")
    assert teacher.labels == LABELS_FER_PLUS and teacher.label_index == [6, 3, 5, 4, 0, 1, 2]
    faces = _faces(4)
    with torch.no_grad():
        every_output = model(teacher.preprocessing.apply(faces)).numpy()
    np.testing.assert_allclose(teacher.logits(faces), every_output[:, :7], atol=1e-4)
    with pytest.raises(QuantizeError, match="unknown expression label 'contemt'"):
        load_teacher(f"{path}:labels={'/'.join(LABELS_FER_PLUS)}/contemt")


def test_a_spec_file_with_keys_the_tool_does_not_read_is_refused_and_a_card_is_not(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    _save_onnx(TinyNet(channels=1, classes=7), path, (1, 1, 48, 48))
    _write_spec(tmp_path / "m.json", {"classes": LABELS_FER_PLUS, "input": {"mean": "half"}})
    with pytest.raises(QuantizeError, match=r"m.json: unknown key 'classes'; .*labels"):
        load_teacher(path)
    _write_spec(tmp_path / "m.json", {"labels": "fer2013", "input": {"norm": "half"}})
    with pytest.raises(QuantizeError, match=r"m.json: unknown key 'input.norm'; .*mean"):
        load_teacher(path)
    # A model card is a spec too, with many keys recorded for people.
    card = new_card(
        name="m",
        labels=list(CANONICAL_LABELS),
        channels=1,
        height=48,
        width=48,
        mean=[0.5],
        std=[0.5],
        crop_margin=0.1,
        precision="fp32",
        variants={"fp32": path.name},
        variant_sha256={"fp32": "0" * 64},
        metrics={"fp32": {"top1": 0.6}},
    )
    _write_spec(tmp_path / "m.json", card)
    assert load_teacher(path).preprocessing.mean == [0.5]


@pytest.mark.filterwarnings("ignore:teacher .* has no spec or card beside it")
def test_a_channels_last_onnx_teacher_is_named_and_told_what_to_change(tmp_path: Path) -> None:
    class ChannelsLast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = TinyNet(channels=3, classes=7)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x.permute(0, 3, 1, 2))

    path = tmp_path / "nhwc.onnx"
    _save_onnx(ChannelsLast(), path, (1, 48, 48, 3))
    with pytest.raises(QuantizeError, match=r"teacher nhwc.onnx: its input .* is channels-last \(NHWC\)"):
        load_teacher(path)


@pytest.mark.filterwarnings("ignore:teacher .* has no spec or card beside it")
def test_onnx_with_fixed_batch_runs_face_by_face(tmp_path: Path) -> None:
    model = TinyNet(channels=3, classes=7).eval()
    path = tmp_path / "fixed.onnx"
    _save_onnx(model, path, (1, 3, 48, 48), dynamic=False)
    teacher = load_teacher(path)
    assert teacher.max_batch == 1 and teacher.preprocessing.mean == [0.485, 0.456, 0.406]
    assert teacher.logits(_faces(3)).shape == (3, 7)


def test_onnx_with_a_fixed_batch_above_one_or_a_float16_input_gives_the_models_logits(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = TinyNet(channels=1, classes=7).eval()
    faces = _faces(11)  # one batch of 8 and a short one of 3
    with torch.no_grad():
        expected = model(torch.from_numpy(faces).float().unsqueeze(1) / 255.0).numpy()
    path = tmp_path / "batch8.onnx"
    _save_onnx(model, path, (8, 1, 48, 48), dynamic=False)
    teacher = load_teacher(path, {"input": {"mean": 0.0, "std": 1.0}})
    assert teacher.max_batch == 8
    np.testing.assert_allclose(teacher.logits(faces), expected, atol=1e-4)
    half = tmp_path / "half.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model.half(),
            (torch.zeros(1, 1, 48, 48, dtype=torch.float16),),
            str(half),
            dynamo=False,
            input_names=["input"],
            dynamic_axes={"input": {0: "batch"}},
        )
    teacher = load_teacher(half, {"input": {"mean": 0.0, "std": 1.0}})
    np.testing.assert_allclose(teacher.logits(faces), expected, atol=0.05)


@pytest.mark.filterwarnings("ignore:teacher .* has no spec or card beside it")
def test_onnx_spec_that_contradicts_the_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    _save_onnx(TinyNet(channels=1, classes=7), path, (1, 1, 48, 48))
    with pytest.raises(QuantizeError, match=r"spec says input 96x96 but the ONNX model takes 48x48"):
        load_teacher(f"{path}:size=96")
    with pytest.raises(QuantizeError, match=r"model has 7 outputs but its spec lists 6 labels"):
        load_teacher(path, {"labels": ["angry", "fear", "happy", "neutral", "sad", "surprise"]})
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(QuantizeError, match="onnxruntime cannot load it"):
        load_teacher(tmp_path / "junk.onnx")


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_teacher_from_a_command_line_spec(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = TinyNet(channels=1, classes=7).eval()
    path = tmp_path / "scripted.ts"
    torch.jit.script(model).save(str(path))
    teacher = load_teacher(f"{path}:size=32,channels=1,mean=0.5,std=0.25,labels=fer2013")
    assert teacher.backend == "torchscript" and teacher.num_params == sum(p.numel() for p in model.parameters())
    faces = _faces(4)
    x = (
        torch.nn.functional.interpolate(
            torch.from_numpy(faces).float().unsqueeze(1) / 255, size=32, mode="bilinear", align_corners=False
        )
        - 0.5
    ) / 0.25
    with torch.no_grad():
        np.testing.assert_allclose(teacher.logits(faces), model(x).numpy(), atol=1e-5)

    class WithFeatures(nn.Module):  # returns (logits, features), as many training scripts' models do
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.net(x)
            return logits, x.flatten(1)

    torch.jit.script(WithFeatures()).save(str(path))
    teacher = load_teacher(f"{path}:size=32,channels=1,mean=0.5,std=0.25,labels=fer2013")
    with torch.no_grad():
        np.testing.assert_allclose(teacher.logits(faces), model(x).numpy(), atol=1e-5)


def test_checkpoint_teacher_spec_from_toml_and_command_line_overrides(tmp_path: Path, resnet18_state: dict) -> None:
    path = tmp_path / "teacher.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in resnet18_state.items()}, "epoch": 9}, path)
    (tmp_path / "teacher.toml").write_text(
        'arch = "resnet18"\nlabels = "fer2013"\n[input]\nsize = 64\nmean = "imagenet"\n'
    )
    teacher = load_teacher(path)
    assert teacher.preprocessing.size == (64, 64) and teacher.arch == "resnet18"
    overridden = load_teacher(f"{path}:size=56")
    assert overridden.preprocessing.size == (56, 56)
    faces = _faces(3)
    model, _ = model_from_state_dict(resnet18_state)
    with torch.no_grad():
        expected = model.eval()(teacher.preprocessing.apply(faces)).numpy()
    np.testing.assert_allclose(teacher.logits(faces), expected, atol=1e-4)
    bf16 = load_teacher(path, precision="bf16")
    assert (bf16.logits(faces).argmax(1) == expected.argmax(1)).mean() >= 2 / 3


def test_checkpoint_teacher_faults_are_one_line_errors(tmp_path: Path, resnet18_state: dict) -> None:
    path = tmp_path / "bare.pt"
    torch.save(resnet18_state, path)
    with pytest.raises(QuantizeError, match=r"input size unknown; write bare\.json beside it"):
        load_teacher(path)
    with pytest.raises(QuantizeError, match=r"model has 7 outputs but its spec lists 6 labels"):
        load_teacher(f"{path}:size=48,labels=angry/fear/happy/neutral/sad/surprise")
    with pytest.raises(QuantizeError, match=r"spec says 1 channels but the first conv takes 3"):
        load_teacher(f"{path}:size=48,channels=1")
    with pytest.raises(QuantizeError, match=r"unknown expression label 'bored'"):
        load_teacher(f"{path}:size=48,labels=angry/bored/fear/happy/sad/surprise/neutral")
    five = build_arch("resnet18", 5).state_dict()
    torch.save(five, tmp_path / "five.pt")
    with pytest.raises(QuantizeError, match=r"5 outputs but no labels"):
        load_teacher(f"{tmp_path / 'five.pt'}:size=48")
    (tmp_path / "garbage.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(QuantizeError, match="not a readable PyTorch checkpoint"):
        load_teacher(f"{tmp_path / 'garbage.pt'}:size=48")
    zipped = bytearray(path.read_bytes())  # a zip whose end record holds, but whose directory is damaged
    directory = zipped.rfind(b"PK\x01\x02")
    zipped[directory : directory + 4] = b"XXXX"
    (tmp_path / "damaged.pt").write_bytes(bytes(zipped))
    with pytest.raises(QuantizeError, match="not a readable PyTorch checkpoint"):
        load_teacher(f"{tmp_path / 'damaged.pt'}:size=48")
    with pytest.raises(QuantizeError, match="does not exist"):
        load_teacher(tmp_path / "missing.pt")
    with pytest.raises(QuantizeError, match=r"is a folder; give the checkpoint, TorchScript or .onnx file in it"):
        load_teacher(tmp_path)
    for empty in (tmp_path / "empty.pt", tmp_path / "empty.onnx"):
        empty.write_bytes(b"")
        with pytest.raises(QuantizeError, match=r"the file is empty \(0 bytes\), a copy or download cut short"):
            load_teacher(f"{empty}:size=48")


def test_an_onnx_teacher_without_spec_or_card_is_loaded_with_a_warning_naming_what_it_assumes(tmp_path: Path) -> None:
    built = write_tiny_model(tmp_path / "built")
    bare = tmp_path / "renamed.onnx"  # copied away from its card
    shutil.copy(built, bare)
    with pytest.warns(UserWarning, match=r"teacher renamed.onnx has no spec or card beside it \(renamed.json\); .*"):
        load_teacher(bare)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_teacher(built)  # its card describes it
        load_teacher(f"{bare}:mean=0.5,std=0.5")  # options describe it


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_spec_values_the_tool_cannot_use_name_the_teacher_and_what_to_give(
    tmp_path: Path, resnet18_state: dict
) -> None:
    checkpoint = tmp_path / "rn.pt"
    torch.save(resnet18_state, checkpoint)
    scripted = tmp_path / "ts.pt"
    torch.jit.script(TinyNet(channels=1, classes=7).eval()).save(str(scripted))
    onnx = write_tiny_model(tmp_path)
    channels = r"input channels '(gray|rgb)' unknown; use 1 \(grey\) or 3 \(colour\)"
    with pytest.raises(QuantizeError, match=rf"^teacher ts.pt: {channels}$"):
        load_teacher(f"{scripted}:size=48,channels=gray")
    with pytest.raises(QuantizeError, match=rf"^teacher rn.pt: {channels}$"):
        load_teacher(f"{checkpoint}:size=48,channels=rgb")
    with pytest.raises(QuantizeError, match=rf"^teacher tiny.onnx \(spec tiny.json\): {channels}$"):
        load_teacher(f"{onnx}:channels=rgb")
    with pytest.raises(QuantizeError, match=r"^teacher ts.pt: input size 'abc' unknown; use N, HxW or \[H, W\]"):
        load_teacher(f"{scripted}:size=abc")
    (tmp_path / "rn.json").write_text(json.dumps({"input": {"size": [48]}}))
    with pytest.raises(QuantizeError, match=r"^teacher rn.pt \(spec rn.json\): input size \[48\] unknown; use N"):
        load_teacher(checkpoint)
    with pytest.raises(QuantizeError, match=r"^teacher ts.pt: mean has 2 values for a 1-channel input; give 1 \(or 3"):
        load_teacher(f"{scripted}:size=48,channels=1,mean=0.5/0.5")
    with pytest.raises(
        QuantizeError, match=r"^teacher rn.pt \(spec rn.json\): std has 2 .* 3-channel input; give 1 or 3$"
    ):
        load_teacher(f"{checkpoint}:size=48,std=0.5/0.5")
    (tmp_path / "rn.json").write_text(json.dumps({"input": {"size": 48.0, "channels": 3.0}}))  # floats, as JSON has
    assert load_teacher(checkpoint).preprocessing.channels == 3


def test_pickled_model_needs_trust_and_probabilities_become_log_scores(tmp_path: Path) -> None:
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 7), nn.Softmax(dim=1)
    ).eval()
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.raises(QuantizeError, match="pickles Python objects.*--trust-pickle"):
        load_teacher(f"{path}:size=48")
    teacher = load_teacher(f"{path}:size=48,output=probabilities", trust_pickle=True)
    faces = _faces(2)
    with torch.no_grad():
        probs = model(teacher.preprocessing.apply(faces)).numpy()
    np.testing.assert_allclose(teacher.logits(faces), np.log(probs), atol=1e-5)


@pytest.mark.filterwarnings("ignore:teacher .* has no spec or card beside it")
def test_a_teacher_must_say_whether_it_answers_probabilities_or_logits(tmp_path: Path) -> None:
    torch.manual_seed(5)
    soft, plain = tmp_path / "soft.onnx", tmp_path / "plain.onnx"
    _save_onnx(nn.Sequential(TinyNet(1, 7), nn.Softmax(dim=1)), soft, (1, 1, 48, 48))
    _save_onnx(TinyNet(1, 7), plain, (1, 1, 48, 48))
    with pytest.raises(QuantizeError, match=r"soft.onnx.*ends in softmax.*soft.onnx:output=probabilities"):
        load_teacher(soft)
    assert load_teacher(f"{soft}:output=probabilities").output == "probabilities"
    with pytest.raises(QuantizeError, match=r"plain.onnx.*outside 0..1.*remove output=probabilities"):
        load_teacher(f"{plain}:output=probabilities")
    assert load_teacher(plain).output == "logits"


def test_teacher_argument_parsing() -> None:
    assert parse_teacher_arg("t.pt") == (Path("t.pt"), {})
    path, spec = parse_teacher_arg("dir/t.onnx:size=96,channels=3,mean=imagenet,labels=a/b,head=linear:64+relu+linear")
    assert path == Path("dir/t.onnx")
    assert spec == {
        "input": {"size": "96", "channels": "3", "mean": "imagenet"},
        "labels": "a/b",
        "head": "linear:64,relu,linear",
    }
    with pytest.raises(QuantizeError, match="teacher option 'colour=red'"):
        parse_teacher_arg("t.pt:colour=red")


# ---------------------------------------------------------------- train-teacher


def _tiny_fer_csv(path: Path) -> Path:
    rng = np.random.default_rng(5)
    lines = ["emotion,pixels,Usage"]
    for i in range(96):
        label = i % 7
        # Class-dependent brightness gives the network something learnable.
        image = np.clip(rng.normal(40 + 25 * label, 20, 48 * 48), 0, 255).astype(np.uint8)
        lines.append(f"{label},{' '.join(map(str, image))},{'Training' if i < 64 else 'PublicTest'}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_train_teacher_writes_a_loadable_teacher_and_resumes(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = _tiny_fer_csv(tmp_path / "fer.csv")
    out = tmp_path / "teachers" / "r18.pt"
    first = train_teacher(
        "resnet18", data, out, epochs=2, batch_size=16, size=32, seed=1, device="cpu", stop_after_epochs=1, threads=1
    )
    assert first.epochs_done == 1
    state = torch.load(out.with_name("r18.resume.pt"), weights_only=True)
    assert state["epoch"] == 1
    spec = json.loads(out.with_suffix(".json").read_text())
    assert spec["epochs_done"] == 1 and spec["input"]["size"] == [32, 32] and spec["arch"] == "resnet18"

    # The subcommand wiring the CLI uses; same options resume the run instead of starting over.
    parser = argparse.ArgumentParser()
    add_train_teacher_options(parser)
    args = parser.parse_args(
        [
            "--data",
            str(data),
            "--out",
            str(out),
            "--arch",
            "resnet18",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--size",
            "32",
            "--seed",
            "1",
            "--device",
            "cpu",
            "--threads",
            "1",
        ]
    )
    assert run_train_teacher(args) == 0
    printed = capsys.readouterr().out
    assert "resuming r18.resume.pt after epoch 1/2" in printed
    log = out.with_suffix(".log").read_text().splitlines()
    assert [line.split()[1] for line in log] == ["1/2", "2/2"]
    spec = json.loads(out.with_suffix(".json").read_text())
    assert spec["epochs_done"] == 2 and spec["epoch"] in (1, 2)
    assert spec["val_top1_fliptta"] == spec["publictest_top1_fliptta"]

    # What was written is a bare torchvision-layout state_dict that loads as a teacher through its spec.
    sd = torch.load(out, weights_only=True)
    assert "fc.weight" in sd and not any(k.startswith("module.") for k in sd)
    teacher = load_teacher(out)
    faces = load_dataset(data, "test")
    accuracy = float((teacher.logits(faces.images, flip_tta=True).argmax(1) == faces.labels).mean())
    assert accuracy == pytest.approx(spec["val_top1_fliptta"], abs=1e-3)

    changed = parser.parse_args(
        ["--data", str(data), "--out", str(out), "--epochs", "2", "--size", "48", "--batch-size", "16", "--seed", "1"]
    )
    with pytest.raises(QuantizeError, match=r"started with other settings \(size 32 -> 48\)"):
        run_train_teacher(changed)


YUNET = SHARED / "models" / "face_detection_yunet_2026may.onnx"


@pytest.mark.skipif(
    not (SHARED_TEACHER.exists() and FER_CSV.exists() and YUNET.exists()),
    reason=f"shared teacher, FER2013 CSV or YuNet absent ({SHARED_TEACHER}, {FER_CSV}, {YUNET})",
)
@pytest.mark.slow
def test_a_teacher_fine_tuned_on_the_students_faces_teaches_them_as_it_learnt_them(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    from quantize.training_data import teacher_views
    from tests.quantize_support import VOTE_HEADER, real_fer_rows, write_fer_csv

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rows = real_fer_rows(train=64, test=140)
    data = write_fer_csv(tmp_path / "fer.csv", rows)
    votes = tmp_path / "votes.csv"
    usages = [usage for usage, (_, labels) in rows.items() for _ in labels]  # the CSV's order
    votes.write_text("\n".join([VOTE_HEADER, *(f"{u},{i},0,10,0,0,0,0,0,0,0,0" for i, u in enumerate(usages))]) + "\n")
    out = tmp_path / "teachers" / "tuned.pt"
    parser = argparse.ArgumentParser()
    add_train_teacher_options(parser)
    options = ["--data", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "16", "--lr", "1e-6"]
    options += ["--init", str(SHARED_TEACHER), "--votes", str(votes), "--votes-weight", "0.5"]
    options += ["--align", "--yunet", str(YUNET), "--illumination", "equalize", "--device", "cpu", "--threads", "2"]
    assert run_train_teacher(parser.parse_args(options)) == 0
    printed = capsys.readouterr().out

    spec = json.loads(out.with_suffix(".json").read_text())
    # Started from the trained teacher: far above the 1-in-7 of fresh weights after four tiny steps.
    assert spec["val_top1_fliptta"] >= 0.45, printed
    assert "starting from resnet18_fer2013_96.pt" in printed and spec["init"] == SHARED_TEACHER.name
    assert spec["input"]["illumination"] == "equalize" and len(spec["crop"]["align_template"]) == 5
    assert spec["labels_source"]["kind"] == "votes" and spec["labels_source"]["faces_with_votes"] == len(
        rows["Training"][1]
    )
    assert spec["labels_source"]["weight"] == 0.5 and spec["alignment"]["detector"] == YUNET.name

    # Distillation reads the spec and shows the teacher the faces framed and lit as it learnt them: it scores the
    # validation faces exactly as training did.
    teacher = load_teacher(out)
    assert teacher.align_template == spec["crop"]["align_template"]
    assert teacher.preprocessing.illumination == "equalize"
    faces = load_dataset(data, "test")
    view = teacher_views(faces, [teacher], YUNET, tmp_path / "cache", lambda _: None)[0]
    accuracy = float((teacher.logits(view.images, flip_tta=True).argmax(1) == view.labels).mean())
    assert accuracy == pytest.approx(spec["val_top1_fliptta"], abs=1e-3)


def test_init_weights_of_another_network_are_refused_before_any_data_is_read(tmp_path: Path, resnet18_state) -> None:
    data = tmp_path / "not-yet-there.csv"  # the data would be refused too, but the weights are named first
    weights = tmp_path / "r18.pt"
    torch.save(resnet18_state, weights)
    out = tmp_path / "r34.pt"
    with pytest.raises(
        QuantizeError, match=r"^--init .*r18\.pt: the checkpoint holds resnet18 weights, not resnet34; .*--arch"
    ):
        train_teacher("resnet34", data, out, epochs=1, device="cpu", init=str(weights))
    with pytest.raises(QuantizeError, match=r"^--init .*gone\.pt not found; give the weights"):
        train_teacher("resnet18", data, out, epochs=1, device="cpu", init=str(tmp_path / "gone.pt"))
    scripted = tmp_path / "scripted.pt"
    with warnings.catch_warnings():  # deprecated in torch, and still what users hand us
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(TinyNet(channels=1, classes=7).eval()).save(str(scripted))
    with pytest.raises(QuantizeError, match=r"^--init .*scripted\.pt: a TorchScript model, not a checkpoint of weig"):
        train_teacher("resnet18", data, out, epochs=1, device="cpu", init=str(scripted))
    assert not out.exists() and not out.with_suffix(".log").exists()


def test_a_resume_state_of_a_version_without_face_options_still_resumes(tmp_path: Path) -> None:
    from quantize.teacher_config import TrainConfig
    from quantize.teacher_run_files import RunFiles

    files = RunFiles.beside(tmp_path / "r18.pt")
    cfg = TrainConfig(data="fer.csv", out=str(files.weights)).resolved()
    files.save_state(cfg, {"epoch": 1})
    state = torch.load(files.resume, weights_only=True)
    for key in ("init", "votes", "votes_weight", "align", "yunet", "illumination"):
        del state["config"][key]  # what a state written before these options holds
    torch.save(state, files.resume)
    assert files.load_state(cfg)["epoch"] == 1


def test_a_run_started_with_a_setting_that_changed_nothing_resumes_without_it(tmp_path: Path) -> None:
    """--yunet without --align and --votes-weight without --votes are refused now; a run started with them
    before resumes with the same command less those options, which never acted."""
    from quantize.teacher_config import TrainConfig
    from quantize.teacher_run_files import RunFiles

    files = RunFiles.beside(tmp_path / "r18.pt")
    started = TrainConfig(data="fer.csv", out=str(files.weights), yunet="yunet.onnx", votes_weight=0.5).resolved()
    files.save_state(started, {"epoch": 3})
    assert files.load_state(TrainConfig(data="fer.csv", out=str(files.weights)).resolved())["epoch"] == 3
    aligned = TrainConfig(data="fer.csv", out=str(files.weights), align=True).resolved()
    with pytest.raises(QuantizeError, match="other settings"):
        files.load_state(aligned)
    with pytest.raises(QuantizeError, match=r"other settings \(illumination 'none' -> 'equalize'\)"):
        files.load_state(TrainConfig(data="fer.csv", out=str(files.weights), illumination="equalize").resolved())


def test_with_grey_level_normalisation_a_teacher_learns_faces_normalised_after_augmentation() -> None:
    from quantize.train_teacher import _augmented_batch

    rng = np.random.default_rng(0)
    dim = torch.from_numpy(rng.integers(100, 140, (8, 48, 48), dtype=np.uint8))  # a dim, flat room
    pre = {name: Preprocessing(size=(64, 64), channels=3, illumination=name) for name in ("none", "equalize")}
    batches = {name: _augmented_batch(dim, p, torch.Generator().manual_seed(1)) for name, p in pre.items()}
    assert batches["equalize"].shape == batches["none"].shape == (8, 3, 64, 64)
    # The middle 60% of each face's grey levels, in pixel/255 (quantiles: a randomly erased patch of noise moves them
    # little).
    levels = {name: b[:, 0].flatten(1) * pre[name].std[0] for name, b in batches.items()}
    spread = {name: torch.quantile(v, 0.8, dim=1) - torch.quantile(v, 0.2, dim=1) for name, v in levels.items()}
    # Equalised, each face spreads over the grey range whatever the augmentation did to its light; left as it is,
    # it keeps about the narrow spread the camera gave it.
    assert bool((spread["equalize"] > 0.3).all()) and bool((spread["none"] < 0.15).all()), spread
