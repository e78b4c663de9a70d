"""The files a `quantize train-teacher` run keeps beside `--out model.pt`:

model.pt          best-on-validation weights as a bare torchvision-layout state_dict (what users load)
model.json        teacher spec (arch, labels, input, accuracy, epochs, wall time), read by load_teacher
model.log         one line per epoch
model.resume.pt   latest epoch's full training state; rerunning the same command resumes from it
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edge.contract import CANONICAL_LABELS, first_line
from quantize.archs import head_attr
from quantize.datasets import FaceSet
from quantize.errors import QuantizeError
from quantize.outputs import write_atomically
from quantize.teacher_config import TrainConfig
from quantize.training import save_atomically

STATE_VERSION = 1
# Settings that shape the run; resuming with any of them changed would silently train something else.
RESUME_KEYS = (
    "arch",
    "head",
    "size",
    "channels",
    "mean",
    "std",
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "weight_decay",
    "warmup_epochs",
    "label_smoothing",
    "seed",
    "limit",
    "val_fraction",
    "init",
    "votes",
    "votes_weight",
    "align",
    "yunet",
    "illumination",
)


@dataclass(frozen=True)
class RunFiles:
    weights: Path
    spec: Path
    log: Path
    resume: Path

    @classmethod
    def beside(cls, out: Path) -> RunFiles:
        return cls(out, out.with_suffix(".json"), out.with_suffix(".log"), out.with_name(out.stem + ".resume.pt"))

    def save_weights(self, model: nn.Module) -> None:
        """The model as a torchvision-layout state_dict of plain contiguous CPU tensors (what users load)."""
        save_atomically({k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}, self.weights)

    def append_log(self, line: str) -> None:
        with self.log.open("a", encoding="utf-8") as log:
            log.write(line + "\n")

    def restart_log(self, epochs_kept: int) -> None:
        """Keep the log lines of the epochs a resumed run starts after (an epoch cut short may have logged)."""
        if epochs_kept == 0:
            self.log.unlink(missing_ok=True)  # a fresh run starts a fresh log
        elif self.log.exists():
            kept = self.log.read_text(encoding="utf-8").splitlines()[:epochs_kept]
            self.log.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def save_state(self, cfg: TrainConfig, state: dict[str, Any]) -> None:
        """The latest epoch's training state, with the settings a resumed run must share."""
        save_atomically({"version": STATE_VERSION, "config": _resume_config(cfg), **state}, self.resume)

    def load_state(self, cfg: TrainConfig) -> dict[str, Any]:
        """The saved training state; a QuantizeError naming the fix if it is unreadable or of other settings."""
        path = self.resume
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: say so instead of a traceback
            raise QuantizeError(
                f"cannot resume from {path} ({first_line(exc, 120)}); delete it or pass --no-resume"
            ) from None
        if state.get("version") != STATE_VERSION:
            raise QuantizeError(f"{path} is from another version of the tool; delete it or pass --no-resume")
        # A key a state of an older version lacks had its default value then.
        saved = _in_effect({k: state["config"].get(k, getattr(TrainConfig(), k)) for k in RESUME_KEYS})
        now = _in_effect(_resume_config(cfg))
        changed = [f"{k} {saved[k]!r} -> {now[k]!r}" for k in RESUME_KEYS if saved[k] != now[k]]
        if changed:
            raise QuantizeError(
                f"{path.name} was started with other settings ({'; '.join(changed[:4])}); rerun with "
                "the same options, pass --no-resume to start over, or use another --out"
            )
        return state

    def write_spec(
        self,
        cfg: TrainConfig,
        train: FaceSet,
        val: FaceSet,
        faces: dict[str, Any],
        val_name: str,
        best_acc: float,
        best_epoch: int,
        epochs_done: int,
        wall_s: float,
    ) -> None:
        """The teacher spec load_teacher reads, with the run's accuracy and settings for people; `faces` is
        quantize.training_data's record of the label source and the alignment."""
        pre = cfg.preprocessing()
        spec: dict[str, Any] = {
            "arch": cfg.arch,
            "layout": "torchvision",
            "labels": list(CANONICAL_LABELS),
            "head": cfg.head,
            "classifier": f"{head_attr(cfg.arch)} = {cfg.head}",
            "input": {**pre.to_dict(), "from": "48x48 grey face replicated to the input channels, bilinear resize"},
            **({"crop": {"align_template": faces["align_template"]}} if faces["align_template"] else {}),
            "trained_on": f"{Path(train.source).name} {train.split} ({len(train)} faces)",
            "labels_source": faces["labels_source"],
            **({"alignment": faces["alignment"]} if faces["alignment"] else {}),
            **({"init": Path(cfg.init).name} if cfg.init else {}),
            "validation": f"{Path(val.source).name} {val.split} ({len(val)} faces), flip-TTA",
            "val_top1_fliptta": round(best_acc, 4),
            "epoch": best_epoch,
            "epochs_done": epochs_done,
            "epochs_planned": cfg.epochs,
            "wall_minutes": round(wall_s / 60.0, 1),
            "train": {
                "optimizer": cfg.optimizer,
                "lr": cfg.lr,
                "weight_decay": cfg.weight_decay,
                "batch_size": cfg.batch_size,
                "label_smoothing": cfg.label_smoothing,
                "seed": cfg.seed,
                "precision": cfg.precision,
                "device": cfg.device,
            },
        }
        if val_name == "PublicTest":
            spec["publictest_top1_fliptta"] = spec["val_top1_fliptta"]
        text = json.dumps(spec, indent=1) + "\n"
        write_atomically(self.spec, lambda f: f.write(text.encode("utf-8")))


def _resume_config(cfg: TrainConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in RESUME_KEYS}


def _in_effect(config: dict[str, Any]) -> dict[str, Any]:
    """The settings as they act: a YuNet file without alignment, or a votes weight without votes, changes
    nothing (the options now refuse them, but a run started before may have them in its state)."""
    defaults = TrainConfig()
    return {
        **config,
        "yunet": config["yunet"] if config["align"] else None,
        "votes_weight": config["votes_weight"] if config["votes"] else defaults.votes_weight,
    }
