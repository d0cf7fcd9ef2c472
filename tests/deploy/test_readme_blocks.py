"""The README works when followed literally: its Quick start and Using the API blocks run in order, in a fresh
folder, against a real server (`make serve` started in the background, `localhost:8000` its real address).

The server serves a randomly initialised bundle of the shipped bundle's own architecture (config.json), so that
the blocks' geometry (K + 1 thresholds, GMACs targets) is checked against the shipped model while its labels and
accuracy (retrained at will) are not. `make test` is skipped: it is what runs this test.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import torch

from model.adafocus import AdaFocusV3
from model.budgets import BudgetTable
from model.config import AdaFocusConfig
from model.testing import fixed_budgets, untrained_bundle
from tests.service.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
SECTIONS = ("## Quick start", "## Using the API")


def section_blocks(title: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block in the README section ``title``."""
    start = README.index(title)
    end = README.find("\n## ", start + len(title))
    return re.findall(r"```(\w+)\n(.*?)```", README[start : end if end > 0 else None], flags=re.S)


def shipped_architecture_bundle(path: Path) -> Path:
    """A random bundle with the shipped bundle's config; levels `low` (glance only), `mid`, `high` (all cubes)."""
    data = json.loads((ROOT / "model" / "bundles" / "default" / "config.json").read_text())
    torch.manual_seed(0)
    model = AdaFocusV3(AdaFocusConfig.from_dict(data["model"])).eval()
    return untrained_bundle(path, model, fixed_budgets(model), "# random bundle for the README test\n").path


def script(bundle: Path, port: int) -> str:
    """The blocks as one bash script: `make serve` (re)starts the server in the background and waits for it."""
    lines = [
        "set -euo pipefail",
        "serve() {",
        '  if [ -n "${SERVER_PID:-}" ]; then kill -TERM "$SERVER_PID"; wait "$SERVER_PID" || true; fi',
        f"  .venv/bin/adafocus serve --host 127.0.0.1 --port {port} --bundle {bundle} >>server.log 2>&1 &",
        "  SERVER_PID=$!",
        "  for _ in $(seq 600); do",
        f"    curl -sf http://127.0.0.1:{port}/readyz >/dev/null && return 0",
        '    kill -0 "$SERVER_PID" || { cat server.log; return 1; }',
        "    sleep 0.2",
        "  done",
        "  cat server.log; return 1",
        "}",
        'trap \'[ -n "${SERVER_PID:-}" ] && kill -TERM "$SERVER_PID" && wait "$SERVER_PID"\' EXIT',
    ]
    for title in SECTIONS:
        for language, code in section_blocks(title):
            code = code.replace("localhost:8000", f"127.0.0.1:{port}")
            if language == "bash":
                for line in code.replace("\\\n", " ").splitlines():
                    command = line.split("#")[0].strip() if not line.lstrip().startswith("curl") else line
                    if re.match(r"make serve\b", command.strip()):
                        line = "serve"
                    elif re.match(r"make test\b", command.strip()):
                        continue  # the test suite itself
                    lines += ["echo " + shlex.quote(">>> " + line.strip()[:120]), line, "echo"]
            elif language == "python":
                lines += [".venv/bin/python - <<'PYTHON'", code.rstrip(), "PYTHON"]
    return "\n".join(lines) + "\n"


@pytest.mark.slow
def test_quick_start_and_api_blocks_run_as_written(tmp_path: Path) -> None:
    if not FASHION.exists():  # the blocks write clips of the Fashion-MNIST benchmark
        if os.environ.get("CI"):
            pytest.fail(f"{FASHION} missing in CI; `make data` installs dataset-fashion-mnist")
        pytest.skip(f"{FASHION} missing: run `make data` as root (apt-get install dataset-fashion-mnist)")
    bundle = shipped_architecture_bundle(tmp_path / "bundle" / "default")
    work = tmp_path / "work"
    work.mkdir()
    (work / ".venv").symlink_to(ROOT / ".venv")
    text = script(bundle, free_port())
    (work / "readme.sh").write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAFOCUS_")}
    env.update(ADAFOCUS_DEVICE="cpu", ADAFOCUS_TORCH_THREADS="1", ADAFOCUS_DECODE_WORKERS="1")
    run = subprocess.run(["bash", "readme.sh"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"stdout:\n{run.stdout[-6000:]}\nstderr:\n{run.stderr[-3000:]}"
    out = run.stdout
    answers = [json.loads(line) for line in out.splitlines() if line.startswith('{"request_id"')]
    assert len(answers) == 4  # the four curl /classify commands
    assert [a["budget"] for a in answers] == ["high", "high", "low", "high"]
    assert [a["decode"]["sampling"] for a in answers] == ["exact", "exact", "exact", "fast"]
    assert "cubes" in answers[1] and "steps" in answers[1] and "cubes" not in answers[0]
    assert sorted(p.name for p in (work / "clips").glob("*.mp4")) == [f"clip_00000{i}.mp4" for i in range(4)]
    levels = re.findall(r'\{"name":"(\w+)","version":(\d+)', out)  # GET /budget, then the three PUTs (not `replicas`)
    target = float(re.findall(r'"gmacs": ([\d.]+)', README.split("## Using the API")[1])[-1])  # PUT {"gmacs": ...}
    within = BudgetTable.from_dict(json.loads((bundle / "budgets.json").read_text())).best_within(target).name
    assert [name for name, _ in levels[:4]] == ["high", "low", within, "custom"], levels
    shipped = json.loads((ROOT / "model" / "bundles" / "default" / "config.json").read_text())["model"]
    model = [json.loads(line) for line in out.splitlines() if line.startswith('{"name":"default"')]
    assert [m["num_cubes"] for m in model] == [shipped["num_cubes"]]  # GET /v2/models/default
    assert '{"ready":true,"name":"default"}' in out  # GET /v2/models/default/ready
