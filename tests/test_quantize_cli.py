"""`quantize` command line: every fault a user can cause prints one line, exits 2 and writes nothing; the
real entry point (`python -m quantize`) behaves the same; `eval` reports on a real ONNX model with its card.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from quantize.cli import main  # noqa: E402
from tests.disk_support import fill, tiny_disk  # noqa: E402
from tests.quantize_support import synthetic_faces, write_fer_csv  # noqa: E402
from tests.tiny_model import write_tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli-data")
    return write_fer_csv(folder / "faces.csv", {"Training": synthetic_faces(8, 0), "PublicTest": synthetic_faces(4, 1)})


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Parse and teacher caches go to the test's folder, not the user's home."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _one_error_line(capsys) -> str:
    """The single "error: ..." line, last on stderr (progress lines may come before it), and no traceback."""
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if line.startswith("error")] == err[-1:], err
    assert not any("Traceback" in line for line in err)
    return err[-1]


def _exit_status(run) -> int:
    """main's return value, or the status of the SystemExit argparse raises for a value it refuses."""
    try:
        return run()
    except SystemExit as exc:
        return int(exc.code or 0)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if "cache" not in p.parts)


def _teacher(folder: Path) -> Path:
    """A tiny real ONNX teacher with the card-style spec the teacher loader accepts."""
    return write_tiny_model(folder / "teachers")


@pytest.mark.parametrize(
    "case",
    [
        "no data",
        "no teacher",
        "corrupt teacher",
        "bad student",
        "bad alpha",
        "unreadable out",
        "bad zoom view",
        "no calibration faces",
        "negative lr",
        "negative seed",
        "negative threads",
        "no threads",
        "crop margin too wide",
        "crop margin too tight",
        "no test split",
        "votes weight without votes",
        "work dir is a file",
        "empty teacher",
        "temperature out of range",
        "negative patience",
        "negative max drop",
        "negative latency runs",
    ],
)
def test_build_errors_are_one_line_and_write_nothing(case, data, tmp_path, capsys):
    teacher = _teacher(tmp_path)
    out = tmp_path / "models" / "m"
    args = {"data": str(data), "teacher": str(teacher), "student": "xs", "out": str(out)}
    extra: list[str] = []
    if case == "no data":
        args["data"] = str(tmp_path / "missing.csv")
    elif case == "no teacher":
        args["teacher"] = str(tmp_path / "nowhere.pt")
    elif case == "corrupt teacher":
        bad = tmp_path / "teachers" / "broken.pt"  # a copy cut short, as by a full disk
        torch.save({"fc.weight": torch.zeros(7, 512)}, bad)
        bad.write_bytes(bad.read_bytes()[:3000])
        args["teacher"] = str(bad)
    elif case == "bad student":
        args["student"] = "xxl"
    elif case == "bad alpha":
        extra = ["--alpha", "1.5"]
    elif case == "bad zoom view":
        extra = ["--zoom-view", "0.8"]  # below 1 would shrink the face, which is not a zoom view
    elif case == "no calibration faces":
        extra = ["--calibration-faces", "0"]
    elif case in ("negative lr", "negative seed", "negative threads", "no threads"):
        option = "--" + case.split()[1]
        extra = [option, "0" if case == "no threads" else "-1"]
    elif case == "crop margin too wide":
        extra = ["--crop-margin", "5"]
    elif case == "crop margin too tight":
        extra = ["--crop-margin", "-0.5"]
    elif case == "votes weight without votes":
        extra = ["--votes-weight", "0.5"]
    elif case == "unreadable out":
        (tmp_path / "models").write_text("a file where the output folder should be")
    elif case == "work dir is a file":
        (tmp_path / "afile").write_text("not a folder")
        extra = ["--work-dir", str(tmp_path / "afile")]
    elif case == "empty teacher":
        args["teacher"] = str(tmp_path / "teachers" / "empty.onnx")
        (tmp_path / "teachers" / "empty.onnx").write_bytes(b"")  # a download that never got going
    elif case == "temperature out of range":
        extra = ["--temperature", "inf"]
    elif case == "negative patience":
        extra = ["--patience", "-2"]
    elif case == "negative max drop":
        extra = ["--max-drop", "-1"]
    elif case == "negative latency runs":
        extra = ["--latency-runs", "-5"]
    elif case == "no test split":  # split as many exports do, without FER2013's PublicTest
        splits = {"Training": synthetic_faces(8, 0), "Validation": synthetic_faces(4, 1)}
        args["data"] = str(write_fer_csv(tmp_path / "validation.csv", splits))
    before = _files(tmp_path)
    argv = ["build", "--epochs", "1", *extra, *(x for k, v in args.items() for x in (f"--{k}", v))]
    assert _exit_status(lambda: main(argv)) == 2
    line = _one_error_line(capsys)
    expected = {
        "no data": "missing.csv",
        "no teacher": "nowhere.pt",
        "corrupt teacher": "broken.pt",
        "bad student": "xxl",
        "bad alpha": "alpha",
        "unreadable out": "models",
        "bad zoom view": "zoom view 0.8",
        "no calibration faces": "--calibration-faces 0",
        "negative lr": "--lr -1.0 must be a positive number",
        "negative seed": "--seed -1 must be 0 or more",
        "no test split": "(present: Training, Validation); use one of train, test, private or a Usage value (--eval",
        "negative threads": "--threads -1 must be at least 1",
        "no threads": "--threads 0 must be at least 1",
        "crop margin too wide": "--crop-margin 5 must lie between -0.5 and 2",
        "votes weight without votes": "--votes-weight 0.5 weighs the annotators' votes, but no --votes file is given",
        "crop margin too tight": "--crop-margin -0.5 must lie between -0.5 and 2",
        "work dir is a file": "afile is a file, not a folder; choose another --work-dir",
        "empty teacher": "the file is empty (0 bytes), a copy or download cut short",
        "temperature out of range": "--temperature inf must lie in (0, 100]",
        "negative patience": "--patience -2 must be 0 (off) or more",
        "negative max drop": "argument --max-drop: -1 must be 0 or more accuracy points",
        "negative latency runs": "argument --latency-runs: -5 must be 0 or more",
    }[case]
    assert expected in line
    assert _files(tmp_path) == before


@pytest.mark.parametrize("command", ["build", "distill"])
def test_out_naming_a_folder_is_refused_before_any_training(command, data, tmp_path, capsys):
    (tmp_path / "models").mkdir()
    argv = [command, "--data", str(data), "--student", "xs", "--epochs", "1", "--out", str(tmp_path / "models")]
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert "models is a folder" in line and "models/NAME" in line
    assert _files(tmp_path) == ["models"]


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--lr", "-1", "--lr -1.0 must be a positive number"),
        ("--seed", "-1", "--seed -1 must be 0 or more"),
        ("--threads", "0", "--threads 0 must be at least 1"),
        ("--votes-weight", "0.5", "--votes-weight 0.5 weighs the annotators' votes, but no --votes file is given"),
        ("--yunet", "yunet.onnx", "--yunet yunet.onnx finds the landmarks that --align aligns faces by, but --align"),
        ("--limit", "0", "argument --limit: 0 must be at least 1"),
        ("--stop-after-epochs", "0", "argument --stop-after-epochs: 0 must be at least 1"),
    ],
)
def test_train_teacher_refuses_option_values_before_reading_the_data(option, value, expected, data, tmp_path, capsys):
    out = tmp_path / "teachers" / "t.pt"
    argv = ["train-teacher", "--arch", "resnet18", "--data", str(data), "--epochs", "1", "--out", str(out)]
    assert _exit_status(lambda: main([*argv, option, value])) == 2
    assert expected in _one_error_line(capsys)
    assert _files(tmp_path) == []


def test_export_refuses_a_file_that_is_not_a_student(tmp_path, capsys):
    teacher_weights = tmp_path / "teacher.pt"
    torch.save({"fc.weight": torch.zeros(7, 4)}, teacher_weights)
    assert main(["export", "--student", str(teacher_weights), "--out", str(tmp_path / "m")]) == 2
    assert "not a student checkpoint" in _one_error_line(capsys)
    assert _files(tmp_path) == ["teacher.pt"]
    scripted = tmp_path / "scripted.pt"
    with warnings.catch_warnings():  # deprecated in torch, and still what users hand us
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(torch.nn.Linear(4, 7)).save(str(scripted))
    assert main(["export", "--student", str(scripted), "--out", str(tmp_path / "m")]) == 2
    assert "scripted.pt is a TorchScript model, not a student checkpoint" in _one_error_line(capsys)


def test_int8_refuses_a_model_its_card_does_not_call_fp32(data, tmp_path, capsys):
    model = write_tiny_model(tmp_path)  # an fp32 graph whose card names no fp32 variant
    before = _files(tmp_path)
    assert main(["int8", "--model", str(model), "--data", str(data)]) == 2
    assert "fp32 variant" in _one_error_line(capsys)
    assert _files(tmp_path) == before


@pytest.mark.parametrize("case", ["no model", "no card", "wrong sha256", "no data"])
def test_eval_errors_are_one_line(case, data, tmp_path, capsys):
    model = write_tiny_model(tmp_path)
    if case == "no model":
        model = tmp_path / "absent.onnx"
    elif case == "no card":
        model.with_suffix(".json").unlink()
    elif case == "wrong sha256":
        card = json.loads(model.with_suffix(".json").read_text())
        card["sha256"] = "0" * 64
        model.with_suffix(".json").write_text(json.dumps(card))
    source = tmp_path / "absent.csv" if case == "no data" else data
    png = tmp_path / "cm.png"
    assert main(["eval", "--model", str(model), "--data", str(source), "--png", str(png)]) == 2
    line = _one_error_line(capsys)
    assert {"no model": "absent.onnx", "no card": "tiny.json", "wrong sha256": "sha256", "no data": "absent.csv"}[
        case
    ] in line
    assert not png.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_user_error(data, tmp_path, capsys):
    assert (
        main(
            [
                "distill",
                "--data",
                str(data),
                "--teacher",
                str(_teacher(tmp_path)),
                "--device",
                "cuda",
                "--out",
                str(tmp_path / "s.pt"),
            ]
        )
        == 2
    )
    assert "--device cpu" in _one_error_line(capsys)
    assert not (tmp_path / "s.pt").exists()


def test_eval_reports_accuracy_confusion_and_writes_png(data, tmp_path, capsys):
    model = write_tiny_model(tmp_path)
    png = tmp_path / "out" / "cm.png"
    assert main(["eval", "--model", str(model), "--data", str(data), "--latency-runs", "5", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "latency per face" in out and "true \\ pred" in out
    table = [line for line in out.splitlines() if line.startswith(("angry", "neutral"))]
    assert len(table) == 2 and len(table[0].split()) == 9  # name, seven counts, recall
    counts = np.array([[int(v) for v in line.split()[1:8]] for line in table])
    assert counts.sum() == 8, "4 angry + 4 neutral test faces"
    assert png.read_bytes()[:4] == b"\x89PNG" and sorted(p.name for p in png.parent.iterdir()) == ["cm.png"]


def test_warnings_are_one_line_each(tmp_path):
    """A class folder the tool leaves out (FER+ exports hold contempt) is said in one line, not with the
    source line of the code that noticed it."""
    for split in ("train", "test"):
        for name in ("happy", "sad", "contempt"):
            folder = tmp_path / "faces" / split / name
            folder.mkdir(parents=True)
            for i in range(2):
                face = np.random.default_rng(i).integers(0, 256, (48, 48), dtype=np.uint8)
                assert cv2.imwrite(str(folder / f"{i}.png"), face)
    model = write_tiny_model(tmp_path)
    done = _run("-m", "quantize", "eval", "--model", str(model), "--data", str(tmp_path / "faces"))
    assert done.returncode == 0, done.stderr
    assert "warning: " in done.stderr and "left out contempt" in done.stderr
    assert "UserWarning" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow
def test_python_dash_m_quantize_errors_the_same_way(data, tmp_path):
    done = _run("-m", "quantize", "eval", "--model", str(tmp_path / "gone.onnx"), "--data", str(data))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "gone.onnx" in done.stderr
    done = _run("-m", "quantize", "frobnicate")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1


def test_missing_extra_is_named_with_the_install_command(tmp_path):
    """Without torch (the daemon-only install) the tool says which extra to install."""
    code = (
        "import sys; sys.modules['torch'] = None; from quantize.cli import main; "
        f"sys.exit(main(['export', '--student', {str(tmp_path / 's.pt')!r}, '--out', {str(tmp_path / 'm')!r}]))"
    )
    done = _run("-c", code)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: the quantize tool needs the optional package torch; install it with pip install 'edge-mood[quantize]'"
    )


def test_a_full_disk_while_a_checkpoint_is_saved_is_one_line_and_keeps_the_old_one(data, tmp_path, capsys):
    with tiny_disk(tmp_path / "disk") as disk:
        old = disk / "s.pt.work" / "distill.ckpt"
        old.parent.mkdir()
        old.write_bytes(b"an earlier epoch")
        fill(disk, leave=16384)  # the checkpoint is larger: torch's writer fails part way
        argv = ["distill", "--data", str(data), "--student", "xs", "--epochs", "1", "--threads", "1"]
        assert main([*argv, "--out", str(disk / "s.pt")]) == 2
        line = _one_error_line(capsys)
        assert "No space left on device" in line and "free some space" in line and str(disk) in line
        assert old.read_bytes() == b"an earlier epoch"
        assert not [p for p in disk.rglob("*.tmp")]


def test_a_full_teacher_cache_folder_is_a_warning_and_the_student_is_still_written(data, tmp_path, capsys):
    out = tmp_path / "s.pt"
    with tiny_disk(tmp_path / "disk") as disk:
        fill(disk)
        argv = ["distill", "--data", str(data), "--teacher", str(_teacher(tmp_path)), "--student", "xs"]
        assert main([*argv, "--epochs", "1", "--threads", "1", "--cache-dir", str(disk), "--out", str(out)]) == 0
        assert [p.name for p in disk.iterdir()] == ["filler"]
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and "could not cache the teacher logits" in warnings[0] and str(disk) in warnings[0]
    assert "No space left on device" in warnings[0] and "--cache-dir" in warnings[0]
    assert out.is_file()


def test_a_full_disk_during_onnx_export_says_so_and_writes_nothing(data, tmp_path, capsys):
    student = tmp_path / "s.pt"
    argv = ["distill", "--data", str(data), "--student", "xs", "--epochs", "1", "--threads", "1"]
    assert main([*argv, "--out", str(student)]) == 0
    with tiny_disk(tmp_path / "disk") as disk:
        fill(disk, leave=16384)  # less than the model
        assert main(["export", "--student", str(student), "--out", str(disk / "m"), "--exporter", "legacy"]) == 2
        line = _one_error_line(capsys)
        assert line.startswith("error: No space left on device: ") and line.endswith(
            "free some space or choose another --out"
        )
        assert [p.name for p in disk.iterdir()] == ["filler"]


def test_the_guide_lists_every_teacher_spec_key_and_the_confidence_step():
    from quantize.teacher_spec import INPUT_KEYS, TOP_KEYS

    guide = (REPO / "docs" / "quantize.md").read_text()
    table = [line.split("|")[1].strip() for line in guide.splitlines() if line.startswith("| `")]
    documented = {key.strip("` ") for cell in table for key in cell.split(",")}
    assert {f"input.{key}" for key in INPUT_KEYS} | set(TOP_KEYS) <= documented
    steps = guide.split("What happens, step by step:")[1].split("\n\n")[1]
    assert "temperature is fitted on the hold-out faces" in steps and "`--no-calibrate`" in steps
