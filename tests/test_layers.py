"""edge/ keeps its three layers (docs/architecture.md): no import runs back up, and `edge tail` loads no
vision stack."""

from __future__ import annotations

import ast
import socket
import subprocess
import sys
from pathlib import Path

EDGE = Path(__file__).resolve().parents[1] / "edge"

LAYERS = {
    1: {"__init__", "errors", "config", "config_sections", "locations", "contract", "boxes", "topics"}
    | {"payloads", "discovery", "tracker", "stats", "sdnotify", "yunet_fetch"},
    2: {"frame_limit", "sources", "capture", "faces", "follow", "crop", "illumination", "classifier", "analyzer"}
    | {"seq_mark", "spool", "mqtt_client", "publisher", "local_broker"},
    3: {"wiring", "pipeline", "check", "bench", "tail", "demo", "cli", "__main__"},
}
LAYER_OF = {module: layer for layer, modules in LAYERS.items() for module in modules}


def edge_imports(tree: ast.AST) -> list[tuple[str, int]]:
    """(edge module, line) for every import of an edge module below `tree`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from edge import x`: x is a module of its own, or a name from edge/__init__.py
            names = [
                f"edge.{alias.name}" if node.module == "edge" and (EDGE / f"{alias.name}.py").exists() else node.module
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "edge":
                found.append((parts[1] if len(parts) > 1 else "__init__", node.lineno))
    return found


def test_every_module_has_a_layer():
    assert {p.stem for p in EDGE.glob("*.py")} == set(LAYER_OF), "place the new module in LAYERS and the docs"


def test_no_import_runs_back_up():
    upward = []
    for path in sorted(EDGE.glob("*.py")):
        for target, line in edge_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if LAYER_OF[target] > LAYER_OF[path.stem]:
                upward.append(f"edge/{path.name}:{line} imports edge.{target} (layer {LAYER_OF[target]})")
    assert upward == []


def test_the_cli_imports_command_modules_only_when_a_command_runs():
    tree = ast.parse((EDGE / "cli.py").read_text(encoding="utf-8"))
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    at_import = {target for node in top_level for target, _ in edge_imports(node)}
    assert at_import and all(LAYER_OF[target] == 1 for target in at_import), at_import


def imported_packages(*args: str) -> tuple[set[str], subprocess.CompletedProcess]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "edge", *args], capture_output=True, text=True, timeout=120
    )
    names = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    return {name.split(".")[0] for name in names}, done


def test_edge_tail_loads_neither_opencv_nor_onnxruntime():
    with socket.socket() as probe:  # a port nobody listens on: tail stops at the connect with one line
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    packages, done = imported_packages("tail", "--broker", f"127.0.0.1:{port}")
    assert done.returncode == 2 and "unreachable" in done.stderr
    assert "paho" in packages
    assert {"cv2", "onnxruntime"} & packages == set()
    packages, done = imported_packages("tail", "--help")
    assert done.returncode == 0
    assert {"cv2", "onnxruntime"} & packages == set()
