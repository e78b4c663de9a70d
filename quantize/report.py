"""The Markdown report beside a built model: what it is, how well and how fast it works, and its limits.

Everything comes from the card (metrics, teachers, data set, settings) plus the training history.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

VARIANT_TITLES = {"fp32": "FP32", "int8": "INT8 QDQ (shipped)", "int8_qoperator": "INT8 QOperator (comparison only)"}


def save_training_png(history: list[dict[str, Any]], path: Path, title: str) -> None:
    """Loss and top-1 per epoch, training vs validation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    left.plot(epochs, [h["loss"] for h in history], label="training loss (distillation)")
    left.plot(epochs, [h["hard_loss"] for h in history], label="training cross-entropy")
    validated = all("val_top1" in h for h in history)  # not with --val-fraction 0
    if validated:
        left.plot(epochs, [h["val_loss"] for h in history], label="validation cross-entropy")
    left.set_xlabel("epoch")
    left.legend()
    right.plot(epochs, [h["train_top1"] for h in history], label="training top-1 (augmented)")
    if validated:
        right.plot(epochs, [h["val_top1"] for h in history], label="validation top-1")
    right.set_xlabel("epoch")
    right.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def _views_sentence(card: dict[str, Any]) -> str:
    zooms, flip = card.get("zoom_views", []), bool(card.get("flip_average"))
    if not zooms and not flip:
        return ""
    views = ["the face"] + [f"a {z:g}x centre zoom (--zoom-view {z:g})" for z in zooms]
    count = len(views) * (2 if flip else 1)
    if flip:
        views.append("its mirror image (--flip-average)" if not zooms else "the mirror image of each (--flip-average)")
    listed = " and ".join(views) if len(views) == 2 else ", ".join(views[:-1]) + " and " + views[-1]
    return f" The graph averages the logits of {count} views of each face: {listed}; all figures below include it."


def _learnt_from(card: dict[str, Any]) -> str:
    dataset, source, teachers = card["dataset"], card.get("labels_source") or {}, card["teachers"]
    on = f"`{dataset['name']}` (sha256 {dataset['sha256'][:12]}...)"
    if source.get("kind") == "votes":
        on += (
            f" with annotators' votes from `{source['file']}` for {source['faces_with_votes']:,} faces "
            f"(weight {source['weight']:g} against the data set's own label)"
        )
    if not teachers:
        return f"trained on {on}, without teachers"
    return f"distilled from {len(teachers)} teacher{'s' if len(teachers) > 1 else ''} on {on}"


def _faces_sentence(card: dict[str, Any]) -> str:
    parts = []
    if card["crop"].get("align_template"):
        found = (card.get("alignment") or {}).get("found")
        share = f" ({found * 100:.0f}% of training faces had landmarks)" if found else ""
        parts.append(f"faces are aligned by their five landmarks to the card's template{share}")
    if card["input"].get("illumination", "none") != "none":
        parts.append(f"grey levels are normalised (`{card['input']['illumination']}`)")
    text = f" In training and in the daemon alike, {' and '.join(parts)}." if parts else ""
    calibration = card.get("calibration")
    if calibration:
        text += (
            f" Confidence calibrated on the hold-out faces with temperature {calibration['temperature']:.2f}, built "
            f"into the graph (expected calibration error {calibration['ece_before']:.3f} -> "
            f"{calibration['ece_after']:.3f})."
        )
    return text


def _training_summary(student: dict[str, Any], distill: dict[str, Any], epochs_run: int) -> str:
    if not student["val_faces"]:
        return (
            f"Trained on all {student['train_faces']} training faces (no validation hold-out); the last of "
            f"{epochs_run} epochs run ({distill['epochs']} planned) is kept."
        )
    return (
        f"Best validation top-1 {_pct(student['val_top1'])} at epoch {student['best_epoch']} of "
        f"{epochs_run} run ({distill['epochs']} planned); validation is a stratified "
        f"{distill['val_fraction'] * 100:g}% of the training split ({student['val_faces']} faces), "
        f"training used {student['train_faces']}."
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _ms(latency: dict[str, float] | None) -> tuple[str, str]:
    if not latency:
        return "-", "-"
    return f"{latency['median']:.3f}", f"{latency['p90']:.3f}"


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:.0f} KiB"


def _teacher_view(teacher: dict[str, Any]) -> str:
    """How a teacher was shown the training faces (quantize.training_data.teacher_views)."""
    view = "aligned to its template" if teacher.get("align_template") else "as the data set holds them"
    illumination = (teacher.get("input") or {}).get("illumination", "none")
    return view if illumination == "none" else f"{view}, `{illumination}`"


def render_report(card: dict[str, Any], history: list[dict[str, Any]], images: dict[str, str]) -> str:
    """Markdown text; `images` maps "fp32", "int8" (confusion matrices) and "training" to file names."""
    metrics = card["metrics"]
    student, dataset, distill = card["student"], card["dataset"], card["distillation"]
    quant = card["quantization"]
    split = metrics["eval_split"]
    lines = [
        f"# Expression model `{card['name']}`",
        "",
        f"Built {card['created']} by quantize {card['tool']['version']}: student `{student['arch']}` "
        f"({student['params']:,} parameters, input {'x'.join(map(str, card['input']['shape'][1:]))} "
        f"{card['input']['color']}) {_learnt_from(card)}." + _faces_sentence(card) + _views_sentence(card),
        "",
        f"## Summary ({split} split, {metrics['fp32']['faces']} faces)",
        "",
        "| variant | file | size | top-1 | macro F1 |",
        "|---|---|---|---|---|",
    ]
    present = [(key, title) for key, title in VARIANT_TITLES.items() if key in metrics]
    for key, title in present:
        m = metrics[key]
        file = f"`{card['variants'][key]}`" if key in card["variants"] else "not shipped"
        lines.append(f"| {title} | {file} | {_size(m['size_bytes'])} | {_pct(m['top1'])} | {m['macro_f1']:.3f} |")
    lines += [
        "",
        f"INT8 against FP32: top-1 {quant['top1_drop_points']:+.2f} points lost (limit {quant['max_drop_points']:g}), "
        f"same prediction on {quant['agreement'] * 100:.1f}% of faces, mean |probability difference| "
        f"{quant['mean_abs_prob_diff']:.4f}. INT8 calibration: {quant['calibration']} on {quant['calibration_faces']} "
        f"training faces, {quant['format']} format, {quant['weights']} weights, {quant['activations']} activations.",
        "",
        "## Latency",
        "",
        "One face at a time on one onnxruntime thread, preprocessing included, measured on the build machine "
        f"({metrics['latency_ms']['machine']}, onnxruntime {metrics['latency_ms']['onnxruntime']}). The daemon "
        "times both shipped variants on its own device at start and keeps the faster one unless the precision is "
        "pinned in its config; which wins depends on the CPU (an x86 build machine may run a model this small "
        "faster in FP32).",
        "",
        "| variant | ms/face median | ms/face p90 |",
        "|---|---|---|",
    ]
    for key, title in present:
        median, p90 = _ms(metrics["latency_ms"].get(key))
        lines.append(f"| {title} | {median} | {p90} |")
    lines += [
        "",
        "## Per-class recall",
        "",
        "| class | faces | FP32 | INT8 |",
        "|---|---|---|---|",
    ]
    counts = dataset["counts"]["eval"]
    for label in card["labels"]:
        lines.append(
            f"| {label} | {counts.get(label, 0)} | {_pct(metrics['fp32']['recall'].get(label))} | "
            f"{_pct(metrics['int8']['recall'].get(label))} |"
        )
    lines += [
        "",
        "## Confusion matrices (rows: true class, columns: predicted)",
        "",
        f"![FP32 confusion matrix]({images['fp32']}) ![INT8 confusion matrix]({images['int8']})",
        "",
        "## Training",
        "",
        _training_summary(student, distill, len(history)),
        "",
        f"![training curves]({images['training']})",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    teacher_settings = ("temperature", "alpha", "online_teacher") if card["teachers"] else ()
    for key in (
        *teacher_settings,
        "label_smoothing",
        "class_balance",
        "ema_decay",
        "mixup",
        "optimizer",
        "lr",
        "weight_decay",
        "batch_size",
        "epochs",
        "augment",
        "precision",
        "seed",
    ):
        lines.append(f"| {key} | {distill[key]} |")
    lines += [
        "",
        "## Teachers",
        "",
        f"| teacher | arch | parameters | classes | faces seen | top-1 on {split} (flip-averaged) | file sha256 |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in card["teachers"]:
        params = f"{t['params']:,}" if t.get("params") else "-"
        lines.append(
            f"| {t['name']} | {t.get('arch') or t.get('backend')} | {params} | {len(t['labels'])} | "
            f"{_teacher_view(t)} | {_pct(t.get('accuracy'))} | `{t['sha256'][:12]}` |"
        )
    if not card["teachers"]:
        lines.append("| (none: trained on the labels alone) | | | | | | |")
    rarest = min(counts, key=lambda k: counts[k] if counts[k] else 1 << 30)
    lines += [
        "",
        "## Limits",
        "",
        f"- Trained on `{dataset['name']}` ({sum(dataset['counts']['train'].values()):,} faces): the model knows "
        "the kinds of faces its data set holds (FER2013: 48x48 grey web images, mostly frontal, mostly adults). "
        "Expect lower accuracy on side views, harsh lighting, children and faces under about 40 pixels.",
        f"- `{rarest}` is the rarest class ({counts[rarest]} evaluation faces): its recall "
        f"({_pct(metrics['int8']['recall'].get(rarest))} INT8) is the least certain number here.",
        "- Accuracy is measured on the data set's own faces. In the daemon the detector frames the face instead "
        + (
            "(aligned to the template with YuNet's landmarks; cut from the box with Haar, which gives none), "
            if card["crop"].get("align_template")
            else f"(its box plus the card's crop margin, {card['crop']['margin']}), "
        )
        + "which can cost a few points; `bench/generalisation.py` measures that path.",
        "- Latency was measured on the build machine, not on the Raspberry Pi; `edge bench` measures the target.",
        "- Expression labels describe visible facial movement, not a person's feelings.",
        "",
    ]
    return "\n".join(lines)
