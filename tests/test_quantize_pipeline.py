"""The offline chain on real inputs: teacher caching, distillation from an ensemble of every teacher format,
`quantize build` end to end (files, card accepted by the daemon's loader), the INT8 accuracy gate, and INT8
parity on real FER2013 faces.

INT8 parity tolerance (real faces, student trained briefly): the INT8 model picks the same class as FP32 on
at least 90% of faces, and the mean absolute difference of their probabilities is below 0.05.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from edge.classifier import ExpressionModel  # noqa: E402
from edge.contract import load_card, save_card  # noqa: E402
from quantize.card import exported_card  # noqa: E402
from quantize.cli import main  # noqa: E402
from quantize.datasets import FaceSet, load_dataset  # noqa: E402
from quantize.distill import distill  # noqa: E402
from quantize.distill_config import DistillConfig  # noqa: E402
from quantize.distill_loss import class_weights, kd_loss  # noqa: E402
from quantize.errors import QuantizeError  # noqa: E402
from quantize.evaluate import evaluate_onnx  # noqa: E402
from quantize.export import export_student  # noqa: E402
from quantize.int8 import calibration_faces, check_accuracy_drop, quantize_onnx  # noqa: E402
from quantize.label_sources import with_vote_targets  # noqa: E402
from quantize.report import render_report, save_training_png  # noqa: E402
from quantize.student_file import student_meta  # noqa: E402
from quantize.student_input import student_inputs  # noqa: E402
from quantize.teacher_targets import group_teachers, teacher_logits  # noqa: E402
from quantize.teachers import load_teacher  # noqa: E402
from tests.quantize_support import (  # noqa: E402
    FER_CSV,
    LABELS,
    SHARED,
    VOTE_HEADER,
    Columns,
    real_fer_rows,
    save_teachers,
    synthetic_faces,
    train_tiny_teacher,
    write_fer_csv,
)

BUILD_FILES = (
    "syn.onnx",
    "syn.fp32.onnx",
    "syn.json",
    "syn.md",
    "syn.confusion-fp32.png",
    "syn.confusion-int8.png",
    "syn.training.png",
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Two cores are shared by many jobs here; one torch thread avoids oversubscription stalls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    train, test = synthetic_faces(70, seed=0), synthetic_faces(20, seed=1)
    csv = write_fer_csv(folder / "syn.csv.gz", {"Training": train, "PublicTest": test})
    teachers = save_teachers(folder / "teachers", train_tiny_teacher(*train))
    return SimpleNamespace(
        folder=folder,
        csv=csv,
        teachers=teachers,
        train=load_dataset(csv, "train", cache=False),
        test=load_dataset(csv, "test", cache=False),
    )


@pytest.fixture(scope="module")
def built(synthetic, tmp_path_factory):
    """`quantize build` on the synthetic set with a TorchScript and a six-class ONNX teacher, flip averaging and
    a zoom view on.

    One test face is 0.7 points here, so the INT8 gate gets a wide limit: this fixture is about the files a
    build writes; the gate itself is tested on its own below."""
    out = tmp_path_factory.mktemp("models") / "syn"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(synthetic.folder / "cache"))
        status = main(
            [
                "build",
                "--data",
                str(synthetic.csv),
                "--teacher",
                str(synthetic.teachers["torchscript"]),
                "--teacher",
                str(synthetic.teachers["onnx"]),
                "--student",
                "xs",
                "--epochs",
                "6",
                "--batch-size",
                "32",
                "--calibration-faces",
                "70",
                "--latency-runs",
                "10",
                "--max-drop",
                "5",
                "--flip-average",
                "--zoom-view",
                "1.2",
                "--teacher-flip-average",
                "--out",
                str(out),
            ]
        )
    assert status == 0
    return out.parent


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- teacher outputs and the loss


def test_teacher_logits_are_cached_for_face_and_mirror(synthetic, tmp_path):
    teacher = load_teacher(synthetic.teachers["torchscript"])
    forward, calls = teacher._forward, []
    teacher._forward = lambda batch: (calls.append(len(batch)), forward(batch))[1]
    faces = synthetic.train.subset(slice(0, 50))
    clean, mirror = teacher_logits(teacher, "sha-a", faces, tmp_path, log=lambda _: None)
    assert sum(calls) == 100, "each face and its mirror once"
    assert np.allclose(mirror, forward(np.ascontiguousarray(faces.images[:, :, ::-1])), atol=1e-5)
    assert not np.allclose(clean, mirror)
    calls.clear()
    again = teacher_logits(teacher, "sha-a", faces, tmp_path, log=lambda _: None)
    assert calls == [] and np.array_equal(again[0], clean) and np.array_equal(again[1], mirror)
    teacher_logits(teacher, "sha-b", faces, tmp_path, log=lambda _: None)
    assert sum(calls) == 100, "another teacher file (sha256) must not reuse the cache"


def test_teacher_cache_keeps_a_models_logits_and_probabilities_apart(synthetic, tmp_path):
    teacher = load_teacher(synthetic.teachers["torchscript"])
    faces = synthetic.train.subset(slice(0, 20))
    teacher_logits(teacher, "sha", faces, tmp_path, log=lambda _: None)
    told_otherwise = replace(teacher, output="probabilities")
    messages: list[str] = []
    teacher_logits(told_otherwise, "sha", faces, tmp_path, log=messages.append)
    assert any("computing logits" in m for m in messages), "the cache must not answer for another output kind"
    assert told_otherwise.record("sha")["output"] == "probabilities"


def test_kd_loss_renormalises_over_the_classes_a_teacher_knows():
    six = [0, 2, 3, 4, 5, 6]  # no disgust
    student = torch.tensor([[2.0, 9.0, 0.5, 1.0, -1.0, 0.0, 0.3]])
    t = 4.0
    matching = torch.softmax(student[:, six] / t, dim=1)
    assert kd_loss(student, [(six, 1.0, matching)], t).item() == pytest.approx(0.0, abs=1e-6)
    louder_disgust = student.clone()
    louder_disgust[0, 1] = -20.0
    assert kd_loss(louder_disgust, [(six, 1.0, matching)], t).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.full((1, 6), 1 / 6)
    assert kd_loss(student, [(six, 1.0, uniform)], t).item() > 0.01


def test_class_weights_favour_rare_classes_and_keep_the_mean():
    labels = np.repeat(np.arange(7), [400, 40, 400, 700, 500, 300, 500])
    targets = np.eye(7, dtype=np.float32)[labels]  # hard labels as distributions; a label source's work alike
    for mode in ("sqrt", "inverse"):
        w = class_weights(targets, mode).numpy()
        assert w.argmax() == 1
        assert w[labels].mean() == pytest.approx(1.0, rel=1e-5)
    assert class_weights(targets, "none") is None


def test_accuracy_gate():
    assert check_accuracy_drop(0.65, 0.645, 1.0, allow=False) == pytest.approx(0.5)
    with pytest.raises(QuantizeError, match=r"INT8 top-1 63\.00% is 2\.00 points below FP32 65\.00%"):
        check_accuracy_drop(0.65, 0.63, 1.0, allow=False)
    assert check_accuracy_drop(0.65, 0.63, 1.0, allow=True) == pytest.approx(2.0)


# ---------------------------------------------------------------- distillation


def test_flip_averaged_targets_are_the_mean_of_face_and_mirror(synthetic, tmp_path):
    teacher = load_teacher(synthetic.teachers["torchscript"])
    clean, mirror = teacher_logits(teacher, "sha", synthetic.train, tmp_path, log=lambda _: None)
    (plain,) = group_teachers([teacher], [(clean, mirror)], 4.0)
    (averaged,) = group_teachers([teacher], [(clean, mirror)], 4.0, flip_average=True)
    assert not torch.allclose(plain.clean, plain.mirror)
    assert torch.allclose(averaged.clean, (plain.clean + plain.mirror) / 2)
    assert torch.equal(averaged.clean, averaged.mirror)


@pytest.mark.slow
def test_distillation_from_every_teacher_format_learns_and_resumes(synthetic, tmp_path):
    teachers = [(load_teacher(path), _sha256(path)) for path in synthetic.teachers.values()]
    assert {t.backend for t, _ in teachers} == {"torchscript", "onnx", "torch"}
    cfg = DistillConfig(student="xs", epochs=6, batch_size=32)
    result = distill(
        synthetic.train,
        teachers,
        cfg,
        work_dir=tmp_path / "work",
        cache_dir=tmp_path / "cache",
        progress=False,
        log=lambda _: None,
    )
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 6 and losses[-1] < 0.7 * losses[0]
    assert result.best_val_top1 > 0.5, "seven classes: chance is 0.14"
    messages: list[str] = []
    again = distill(
        synthetic.train,
        teachers,
        cfg,
        work_dir=tmp_path / "work",
        cache_dir=tmp_path / "cache",
        progress=False,
        log=messages.append,
    )
    assert any("resuming" in m for m in messages) and not any(m.startswith("epoch") for m in messages)
    assert again.history == result.history and again.best_epoch == result.best_epoch
    for a, b in zip(again.model.state_dict().values(), result.model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_teacher_that_answers_nan_is_refused_before_any_training(synthetic, tmp_path):
    state = torch.load(synthetic.teachers["state_dict"], weights_only=True)
    state["fc.weight"][0, 0] = float("nan")  # a damaged download
    damaged = tmp_path / "rn18.pt"
    torch.save(state, damaged)
    shutil.copy(synthetic.teachers["state_dict"].with_suffix(".json"), damaged.with_suffix(".json"))
    cfg = DistillConfig(student="xs", epochs=1, batch_size=32)
    with pytest.raises(QuantizeError, match=r"teacher rn18 answers NaN or inf for \d+ of \d+ faces; its weights are"):
        distill(
            synthetic.train,
            [(load_teacher(damaged), _sha256(damaged))],
            cfg,
            work_dir=tmp_path / "w",
            cache_dir=tmp_path / "c",
            progress=False,
            log=lambda _: None,
        )
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir()), "no epoch was saved"


def test_a_run_whose_loss_goes_to_nan_stops_at_that_epoch_naming_the_learning_rate(synthetic, tmp_path):
    cfg = DistillConfig(student="xs", epochs=2, batch_size=32, optimizer="sgd", lr=1e8)
    with pytest.raises(QuantizeError, match=r"training diverged in epoch 1 \(loss (nan|inf)\); lower --lr \(this run"):
        distill(synthetic.train, [], cfg, work_dir=tmp_path / "w", progress=False, log=lambda _: None)


@pytest.mark.parametrize("scale", [1e7, float("nan")])
def test_a_student_whose_logits_diverged_is_not_exported(synthetic, tmp_path, scale):
    """Logits in the millions (a loss that stayed finite) or NaN: no exporter is blamed, and no file is left."""
    result = distill(
        synthetic.train,
        [],
        DistillConfig(student="xs", epochs=1, batch_size=32),
        progress=False,
        work_dir=tmp_path / "w",
        log=lambda _: None,
    )
    with torch.no_grad():
        result.model.classifier.weight.mul_(scale)
    sample = student_inputs(synthetic.test.images[:8], student_meta(result))
    with pytest.raises(QuantizeError, match=r"the student's logits reach \S+: its training diverged; .* lower --lr"):
        export_student(result.model, tmp_path / "s.onnx", sample)
    assert not (tmp_path / "s.onnx").exists()


@pytest.mark.slow
def test_a_rerun_with_the_teachers_labels_or_the_label_source_fixed_trains_afresh(synthetic, tmp_path):
    path = synthetic.teachers["torchscript"]
    cfg = DistillConfig(student="xs", epochs=1, batch_size=32)

    def resumed(teacher, faces) -> bool:
        messages: list[str] = []
        work, cache = tmp_path / "work", tmp_path / "cache"
        distill(
            faces, [(teacher, _sha256(path))], cfg, work_dir=work, cache_dir=cache, progress=False, log=messages.append
        )
        return any(m.startswith("resuming") for m in messages)

    resumed(load_teacher(path), synthetic.train)
    reordered = load_teacher(path, {"labels": list(reversed(LABELS))})
    assert not resumed(reordered, synthetic.train), "the same file with its labels fixed is another teacher"
    votes = synthetic.folder / "votes.csv"
    usages = ["Training"] * len(synthetic.train) + ["PublicTest"] * len(synthetic.test)  # the CSV's order
    rows = [f"{usage},{i},0,9,0,0,0,0,0,0,0,0" for i, usage in enumerate(usages)]
    votes.write_text("\n".join([VOTE_HEADER, *rows]) + "\n")
    voted, _ = with_vote_targets(synthetic.train, votes, 0.5)
    assert not resumed(reordered, voted), "votes are another label source"
    assert resumed(reordered, voted), "the same run again resumes"


@pytest.mark.slow
def test_a_run_interrupted_and_resumed_trains_as_the_uninterrupted_one(synthetic, tmp_path):
    cfg = DistillConfig(student="xs", epochs=3, batch_size=32)
    whole = distill(synthetic.train, [], cfg, work_dir=tmp_path / "whole", progress=False, log=lambda _: None)

    def interrupt_in_epoch_2(message: str) -> None:
        if message.startswith("epoch 2"):  # logged before its checkpoint: epoch 1 is the last one saved
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(synthetic.train, [], cfg, work_dir=tmp_path / "cut", progress=False, log=interrupt_in_epoch_2)
    torch.manual_seed(12345)  # whatever the process did in between
    resumed = distill(synthetic.train, [], cfg, work_dir=tmp_path / "cut", progress=False, log=lambda _: None)
    without_time = lambda history: [{k: v for k, v in e.items() if k != "seconds"} for e in history]  # noqa: E731
    assert without_time(resumed.history) == without_time(whole.history)
    for a, b in zip(resumed.model.state_dict().values(), whole.model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_a_rerun_with_an_option_changed_keeps_the_other_runs_checkpoint_for_its_own_command(synthetic, tmp_path):
    """A mistyped rerun (here the epochs left at another value) must not throw away the finished run's training."""
    work = tmp_path / "work"

    def run(epochs: int) -> tuple[list[dict], list[str]]:
        messages: list[str] = []
        cfg = DistillConfig(student="xs", epochs=epochs, batch_size=32)
        result = distill(synthetic.train, [], cfg, work_dir=work, progress=False, log=messages.append)
        return result.history, messages

    first, _ = run(epochs=2)
    _, messages = run(epochs=1)
    assert any("is of another run (epochs 2 -> 1)" in m and "distill.previous.ckpt" in m for m in messages), messages
    again, messages = run(epochs=2)
    assert not any(m.startswith("epoch") for m in messages), f"trained again instead of resuming: {messages}"
    assert again == first
    assert any("kept as distill.previous.ckpt" in m for m in messages), messages
    _, messages = run(epochs=1)
    assert not any(m.startswith("epoch") for m in messages), "the mistyped run's checkpoint was kept too"
    # A crash in the middle of the 2-epoch run's command putting its checkpoint back: its own is in place, the
    # other's only under the spare name. The other run's command finds it there.
    (work / "distill.ckpt").rename(work / "distill.ckpt.swap")
    (work / "distill.previous.ckpt").rename(work / "distill.ckpt")
    _, messages = run(epochs=1)
    assert not any(m.startswith("epoch") for m in messages), f"trained again instead of resuming: {messages}"
    _, messages = run(epochs=3)  # a third run: the one kept back is deleted, and the log says so
    assert any("of a third run (epoch 2), is deleted" in m for m in messages), messages


@pytest.mark.slow
def test_without_validation_every_face_is_trained_on_and_the_last_epoch_is_kept(synthetic, tmp_path):
    teacher = load_teacher(synthetic.teachers["onnx"])
    cfg = DistillConfig(student="xs", epochs=3, batch_size=32, val_fraction=0.0)
    messages: list[str] = []
    result = distill(
        synthetic.train,
        [(teacher, "sha")],
        cfg,
        work_dir=tmp_path / "work",
        cache_dir=tmp_path / "cache",
        progress=False,
        log=messages.append,
    )
    assert (result.train_faces, result.val_faces) == (len(synthetic.train), 0)
    assert result.best_epoch == 3 and result.best_val_top1 is None
    assert not any(key.startswith("val_") for entry in result.history for key in entry)
    assert not any(" val " in m for m in messages if m.startswith("epoch"))
    final = torch.load(tmp_path / "work" / "distill.ckpt", weights_only=False)["model"]
    for name, value in result.model.state_dict().items():
        assert torch.equal(value, final[name].cpu()), f"{name} is not the last epoch's"
    with pytest.raises(QuantizeError, match="patience needs validation faces"):
        DistillConfig(val_fraction=0.0, patience=3).check()


@pytest.mark.slow
def test_with_an_ema_decay_the_kept_student_is_the_weight_average_and_resumes(synthetic, tmp_path):
    cfg = DistillConfig(student="xs", epochs=3, batch_size=32, val_fraction=0.0, ema_decay=0.9)
    result = distill(synthetic.train, [], cfg, work_dir=tmp_path / "work", progress=False, log=lambda _: None)
    saved = torch.load(tmp_path / "work" / "distill.ckpt", weights_only=False)
    average = {k.removeprefix("module."): v for k, v in saved["average"].items() if k.startswith("module.")}
    kept = result.model.state_dict()
    assert kept.keys() == average.keys()
    for name, value in kept.items():
        assert torch.equal(value, average[name].cpu()), f"{name} is not the average's"
    floating = [name for name, value in kept.items() if value.is_floating_point()]
    differing = [name for name in floating if not torch.equal(kept[name], saved["model"][name].cpu())]
    assert len(differing) == len(floating), "every weight and BatchNorm statistic is averaged"
    plain = replace(cfg, ema_decay=0.0)
    distill(synthetic.train, [], plain, work_dir=tmp_path / "plain", progress=False, log=lambda _: None)
    trained = torch.load(tmp_path / "plain" / "distill.ckpt", weights_only=False)["model"]
    for name, value in trained.items():
        assert torch.equal(value, saved["model"][name]), f"the average changed how {name} was trained"
    messages: list[str] = []
    again = distill(synthetic.train, [], cfg, work_dir=tmp_path / "work", progress=False, log=messages.append)
    assert any("resuming" in m for m in messages)
    for name, value in again.model.state_dict().items():
        assert torch.equal(value, kept[name])
    with pytest.raises(QuantizeError, match="EMA decay 1.0 must lie in"):
        DistillConfig(ema_decay=1.0).check()


@pytest.mark.slow
def test_the_weight_average_reads_faces_as_well_as_the_trained_student(synthetic):
    # Six epochs of 13 steps: at decay 0.97 the average still holds the first steps' weights, whose BatchNorm
    # statistics (had they been averaged too) would leave it answering one class whatever the face.
    runs = {
        decay: distill(
            synthetic.train,
            [],
            DistillConfig(student="xs", epochs=6, batch_size=32, ema_decay=decay),
            progress=False,
            log=lambda _: None,
        )
        for decay in (0.0, 0.97)
    }
    assert runs[0.0].best_val_top1 > 0.9, "seven classes: chance is 0.14"
    assert runs[0.97].best_val_top1 >= runs[0.0].best_val_top1 - 0.05


@pytest.mark.slow
def test_with_mixup_the_student_trains_on_blends_still_learns_and_repeats_itself(synthetic, tmp_path):
    cfg = DistillConfig(student="xs", epochs=6, batch_size=32, mixup=0.4)
    mixed = distill(synthetic.train, [], cfg, progress=False, log=lambda _: None)
    plain = distill(synthetic.train, [], replace(cfg, mixup=0.0), progress=False, log=lambda _: None)
    assert mixed.best_val_top1 > 0.9, "seven classes: chance is 0.14"
    assert mixed.history[0]["loss"] > plain.history[0]["loss"], "blended targets are harder to fit"
    # The blends are fixed by seed, epoch and step, so a second run (or a resumed one) blends alike.
    again = distill(synthetic.train, [], cfg, progress=False, log=lambda _: None)
    for name, value in again.model.state_dict().items():
        assert torch.equal(value, mixed.model.state_dict()[name]), f"{name} differs between two runs"


@pytest.mark.slow
def test_report_of_a_build_without_validation_says_the_last_epoch_is_kept(built, tmp_path):
    card = json.loads((built / "syn.json").read_text())
    card["student"].update(val_faces=0, val_top1=None, best_epoch=6)
    history = [{"epoch": e, "loss": 1.0 / e, "hard_loss": 1.2 / e, "train_top1": 0.1 * e} for e in range(1, 7)]
    report = render_report(card, history, {"fp32": "f.png", "int8": "i.png", "training": "t.png"})
    assert "no validation hold-out" in report and "last of 6 epochs" in report
    assert "Best validation" not in report
    save_training_png(history, tmp_path / "t.png", "syn")
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_report_says_what_a_teacherless_aligned_model_learnt_from(built):
    card = json.loads((built / "syn.json").read_text())
    built_teachers, card["teachers"] = card["teachers"], []
    card["labels_source"] = {"kind": "votes", "file": "votes.csv", "weight": 0.5, "faces_with_votes": 90}
    card["crop"]["align_template"] = [[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.75], [0.65, 0.75]]
    card["alignment"] = {"found": 0.9}
    card["input"]["illumination"] = "equalize"
    card["calibration"] = {"temperature": 1.19, "ece_before": 0.045, "ece_after": 0.036}
    report = render_report(card, [{}] * 3, {"fp32": "f.png", "int8": "i.png", "training": "t.png"})
    assert "without teachers" in report and "teacher(s)" not in report
    assert "votes from `votes.csv` for 90 faces (weight 0.5" in report
    assert "aligned by their five landmarks to the card's template (90% of training faces" in report
    assert "normalised (`equalize`)" in report and "temperature 1.19" in report
    assert "| alpha |" not in report, "distillation settings mean nothing without teachers"
    assert "cut from the box with Haar" in report
    # A teacher built by quantize saw the faces as its card frames them, and the report says so.
    card["teachers"] = [{**teacher, "align_template": card["crop"]["align_template"]} for teacher in built_teachers]
    card["teachers"][0]["input"] = {**card["teachers"][0]["input"], "illumination": "equalize"}
    report = render_report(card, [{}] * 3, {"fp32": "f.png", "int8": "i.png", "training": "t.png"})
    assert "| aligned to its template, `equalize` |" in report


def _recording_batches(teacher) -> list[np.ndarray]:
    """The input batches `teacher` will be run on, recorded as it answers them."""
    forward, batches = teacher._forward, []
    teacher._forward = lambda batch: (batches.append(batch.copy()), forward(batch))[1]
    return batches


def test_online_teacher_sees_every_augmented_batch_and_caches_nothing(synthetic, tmp_path):
    teacher = load_teacher(synthetic.teachers["onnx"])
    batches = _recording_batches(teacher)
    cfg = DistillConfig(student="xs", epochs=1, batch_size=32, online_teacher=True)
    result = distill(synthetic.train, [(teacher, "sha")], cfg, cache_dir=tmp_path, progress=False, log=lambda _: None)
    steps = (len(synthetic.train) - result.val_faces) // 32
    assert len(batches) == steps and all(len(b) == 32 for b in batches)
    assert not any(np.array_equal(b, synthetic.train.images[:32]) for b in batches), "augmented, not raw"
    assert list(tmp_path.iterdir()) == [] and np.isfinite(result.history[0]["soft_loss"])
    assert result.history[0]["soft_loss"] > 0


def test_online_teacher_sees_the_augmented_faces_before_the_students_light_normalisation(synthetic):
    # The teacher prepares faces as it learnt them (no equalisation); the student's --illumination is the
    # student's own, so the teacher's batches are the same whatever it is.
    seen: dict[str, list[np.ndarray]] = {}
    for illumination in ("none", "equalize"):
        teacher = load_teacher(synthetic.teachers["onnx"])
        seen[illumination] = _recording_batches(teacher)
        cfg = DistillConfig(student="xs", epochs=1, batch_size=32, online_teacher=True, illumination=illumination)
        distill(synthetic.train, [(teacher, "sha")], cfg, progress=False, log=lambda _: None)
    assert len(seen["none"]) == len(seen["equalize"]) > 0
    for plain, equalised_student in zip(seen["none"], seen["equalize"]):
        np.testing.assert_array_equal(plain, equalised_student)


# ---------------------------------------------------------------- build


@pytest.mark.slow
def test_build_writes_every_file_and_nothing_else(built):
    assert sorted(p.name for p in built.iterdir()) == sorted([*BUILD_FILES, "syn.work"])
    for png in BUILD_FILES[4:]:
        assert (built / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (built / "syn.md").read_text()
    for needle in (
        "## Summary",
        "## Latency",
        "## Per-class recall",
        "syn.confusion-int8.png",
        "syn.training.png",
        "## Teachers",
        "tiny6",
        "as the data set holds them",
        "## Limits",
        "4 views of each face",
        "mirror image",
        "--zoom-view 1.2",
    ):
        assert needle in report


@pytest.mark.slow
def test_built_card_is_accepted_by_the_daemon(built, synthetic):
    card = load_card(built / "syn.json")
    assert card.labels == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert (card.channels, card.height, card.width, card.color) == (1, 48, 48, "gray")
    assert card.variants == {"fp32": "syn.fp32.onnx", "int8": "syn.onnx"} and card.precision == "int8"
    assert card.sha256 == _sha256(built / "syn.onnx")
    raw = card.raw
    assert raw["variant_sha256"] == {"fp32": _sha256(built / "syn.fp32.onnx"), "int8": card.sha256}
    assert [t["name"] for t in raw["teachers"]] == ["tiny7", "tiny6"]
    assert raw["dataset"]["counts"]["eval"]["disgust"] == 20 and raw["distillation"]["temperature"] == 4.0
    assert raw["flip_average"] is True and raw["distillation"]["teacher_flip_average"] is True
    assert raw["zoom_views"] == [1.2]
    for precision in ("int8", "fp32"):
        model = ExpressionModel.load(built / "syn.onnx", precision=precision)
        probs = model.predict(list(synthetic.test.images))
        top1 = float((probs.argmax(1) == synthetic.test.labels).mean())
        assert top1 == pytest.approx(raw["metrics"][precision]["top1"], abs=1e-4)
        mirrored = model.predict([np.ascontiguousarray(face[:, ::-1]) for face in synthetic.test.images])
        assert np.allclose(mirrored, probs, atol=1e-3), f"{precision}: a flip-averaged model ignores mirroring"
    assert raw["metrics"]["int8"]["top1"] > 0.5


@pytest.mark.slow
def test_a_flip_averaged_build_teaches_without_a_second_pass_for_mirrors(built, synthetic, tmp_path):
    teacher = load_teacher(built / "syn.fp32.onnx")  # finds its card, which says flip_average
    assert teacher.mirror_averaged
    forward, calls = teacher._forward, []
    teacher._forward = lambda batch: (calls.append(len(batch)), forward(batch))[1]
    faces = synthetic.train.subset(slice(0, 50))
    clean, mirror = teacher_logits(teacher, "sha", faces, tmp_path, log=lambda _: None)
    assert sum(calls) == 50, "one pass: the graph averages each face with its mirror already"
    asked = forward(np.ascontiguousarray(faces.images[:, :, ::-1]))
    assert np.allclose(mirror, asked, atol=1e-4), "its answer on the mirror is its answer on the face"
    # Told otherwise, the same file is another teacher: its own cache entry, its own record (and fingerprint).
    told_otherwise = load_teacher(f"{built / 'syn.fp32.onnx'}:flip_average=false")
    forward, calls = told_otherwise._forward, []
    told_otherwise._forward = lambda batch: (calls.append(len(batch)), forward(batch))[1]
    teacher_logits(told_otherwise, "sha", faces, tmp_path, log=lambda _: None)
    assert sum(calls) == 100 and told_otherwise.record("sha") != teacher.record("sha")
    card = json.loads((built / "syn.json").read_text())
    (tmp_path / "syn.fp32.onnx").write_bytes((built / "syn.fp32.onnx").read_bytes())
    (tmp_path / "syn.json").write_text(json.dumps({**card, "flip_average": False}))
    assert not load_teacher(tmp_path / "syn.fp32.onnx").mirror_averaged
    assert load_teacher(f"{tmp_path / 'syn.fp32.onnx'}:flip_average=true").mirror_averaged
    with pytest.raises(QuantizeError, match="flip_average 'maybe' is not true or false"):
        load_teacher(f"{tmp_path / 'syn.fp32.onnx'}:flip_average=maybe")


@pytest.mark.slow
def test_a_build_named_with_dots_writes_a_model_the_daemon_loads_with_its_own_card(synthetic, tmp_path):
    out = tmp_path / "models" / "syn.v2"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(synthetic.folder / "cache"))
        args = ["--student", "xs", "--epochs", "1", "--batch-size", "32", "--latency-runs", "0", "--max-drop", "100"]
        assert main(["build", "--data", str(synthetic.csv), *args, "--out", str(out)]) == 0
    card = load_card(tmp_path / "models" / "syn.v2.json")
    assert card.variants == {"fp32": "syn.v2.fp32.onnx", "int8": "syn.v2.onnx"}
    for file_name in card.variants.values():
        assert ExpressionModel.load(tmp_path / "models" / file_name, precision="fp32").card.name == "syn.v2"


@pytest.mark.slow
def test_int8_gate_refuses_and_leaves_the_old_files(built, synthetic, tmp_path, capsys):
    shutil.copy(built / "syn.fp32.onnx", tmp_path)
    card = json.loads((built / "syn.json").read_text())
    card.update(
        precision="fp32",
        variants={"fp32": "syn.fp32.onnx"},
        variant_sha256={"fp32": card["variant_sha256"]["fp32"]},
        sha256=card["variant_sha256"]["fp32"],
    )
    (tmp_path / "syn.json").write_text(json.dumps(card))
    # Calibrated on faces unlike those it is measured on (here: blank ones), INT8 clips every real face's
    # activations and loses many points: the gate must refuse it.
    test_images, test_labels = synthetic_faces(20, seed=1)
    blank = np.full_like(test_images, 128)
    (tmp_path / "data").mkdir()
    data = write_fer_csv(
        tmp_path / "data" / "odd.csv", {"Training": (blank, test_labels), "PublicTest": (test_images, test_labels)}
    )
    before = sorted((p.name, _sha256(p)) for p in tmp_path.iterdir() if p.is_file())
    args = ["int8", "--model", str(tmp_path / "syn.fp32.onnx"), "--data", str(data), "--latency-runs", "0"]
    capsys.readouterr()
    assert main([*args, "--max-drop", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: INT8 top-1 ") and "below FP32" in err[-1]
    assert sum(line.startswith("error") for line in err) == 1
    assert sorted((p.name, _sha256(p)) for p in tmp_path.iterdir() if p.is_file()) == before
    assert main([*args, "--max-drop", "1", "--allow-drop"]) == 0
    written = load_card(tmp_path / "syn.json")
    assert written.variants == {"fp32": "syn.fp32.onnx", "int8": "syn.onnx"}
    assert written.sha256 == _sha256(tmp_path / "syn.onnx")
    assert written.raw["quantization"]["allowed_drop"] is True
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["syn.fp32.onnx", "syn.json", "syn.onnx"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit: what users' teachers come as
def test_build_refuses_a_teacher_below_chance_as_one_in_another_label_order(synthetic, tmp_path, capsys):
    tiny = torch.jit.load(str(synthetic.teachers["torchscript"]))
    shifted = [(i + 3) % 7 for i in range(7)]  # answers in another order than FER2013's, like FER+ models
    other_order = tmp_path / "other_order.pt"
    torch.jit.trace(torch.nn.Sequential(tiny, Columns(shifted)), torch.zeros(1, 1, 48, 48)).save(str(other_order))
    spec = f"{other_order}:size=48,channels=1,mean=half,std=half"
    out = tmp_path / "models" / "m"
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        status = main(["build", "--data", str(synthetic.csv), "--teacher", spec, "--student", "xs", "--out", str(out)])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: teacher other_order") and "below chance" in err[-1] and "labels=" in err[-1]
    assert sum(line.startswith("error") for line in err) == 1
    assert not (tmp_path / "models").exists()


# ---------------------------------------------------------------- real faces


@pytest.mark.slow
@pytest.mark.skipif(not FER_CSV.is_file(), reason=f"FER2013 not found under {SHARED} (../shared)")
def test_int8_stays_close_to_fp32_on_real_faces(tmp_path):
    rows = real_fer_rows(train=900, test=300)
    train = FaceSet(*rows["Training"], source="fer2013", split="train")
    test = FaceSet(*rows["PublicTest"], source="fer2013", split="test")
    result = distill(
        train,
        [],
        DistillConfig(student="xs", epochs=4, batch_size=32, augment="none"),
        progress=False,
        log=lambda _: None,
    )
    meta = student_meta(result)
    fp32 = tmp_path / "real.fp32.onnx"
    export_student(result.model, fp32, student_inputs(test.images[:32], meta))
    save_card(exported_card(meta, "real", fp32, 0.1), tmp_path / "real.json")
    calib = calibration_faces(train, 200)
    inputs = ExpressionModel.load(fp32, precision="fp32").preprocess(list(calib.images))
    int8 = tmp_path / "real.onnx"
    quantize_onnx(fp32, int8, inputs)
    card = json.loads((tmp_path / "real.json").read_text())
    card.update(
        variants={"fp32": fp32.name, "int8": int8.name},
        precision="int8",
        sha256=_sha256(int8),
        variant_sha256={"fp32": _sha256(fp32), "int8": _sha256(int8)},
    )
    save_card(card, tmp_path / "real.json")
    ev32 = evaluate_onnx(fp32, test, latency_runs=0)
    ev8 = evaluate_onnx(int8, test, latency_runs=0)
    assert len(np.unique(ev32.probs.argmax(1))) >= 3, "the student must tell faces apart for parity to mean much"
    assert (ev32.probs.argmax(1) == ev8.probs.argmax(1)).mean() >= 0.90
    assert np.abs(ev32.probs - ev8.probs).mean() < 0.05
