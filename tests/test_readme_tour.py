"""The README's five-minute tour works, command for command, on a fresh data directory.

The tour is read from README.md itself (the first ``bash`` block under "Five-minute tour") and
run with bash in an empty directory that only links the project's ``.venv``, so a user who
copies it meets exactly what this test met. Only ``make demo`` is replaced, by the same main job
on a smaller simulation (the demo's 20,000 orders take minutes); every other line runs as
written. Each foreground command must succeed, and each step must leave the evidence a user
would look for.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DEMO = ".venv/bin/lastmile run --orders 3000 --weeks 6 --seed 42"


def tour_script() -> list[str]:
    """The lines of the tour's bash block, in order (comments and blank lines dropped)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Five-minute tour", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README's tour has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]


def checked(line: str) -> str:
    """The line, failing the script with the line's text when a foreground command fails."""
    if line.rstrip().endswith("&") or line.startswith("kill "):
        return line
    quoted = line.replace("'", "'\"'\"'")
    return f"{line} || {{ echo 'TOUR STEP FAILED: {quoted}' | tee -a tour-failed >&2; exit 1; }}"


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_tour_lines_are_what_the_test_runs() -> None:
    lines = tour_script()
    assert lines[0] == "make demo", "the tour starts with the demo"
    assert any(line.startswith(".venv/bin/lastmile forget") for line in lines)
    assert any(".venv/bin/lastmile stream" in line for line in lines)
    assert any(".venv/bin/lastmile serve" in line for line in lines)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_every_tour_command_works_after_the_demo(tmp_path: Path) -> None:
    for port in (9092, 8000):
        assert port_free(port), f"port {port} is taken: the tour needs it for the broker and the API"
    venv = ROOT / ".venv"
    assert (venv / "bin" / "lastmile").exists(), "run `make install` first"
    (tmp_path / ".venv").symlink_to(venv)
    lines = [DEMO if line == "make demo" else line for line in tour_script()]
    script = "set -o pipefail\ntrap 'kill $(jobs -p) 2>/dev/null' EXIT\n" + "\n".join(checked(line) for line in lines) + "\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LASTMILE_")}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1400)
    out, errors = done.stdout, done.stderr
    failed = (tmp_path / "tour-failed").read_text() if (tmp_path / "tour-failed").exists() else ""
    assert done.returncode == 0, f"{failed}exit {done.returncode}\n--- stdout\n{out[-4000:]}\n--- stderr\n{errors[-6000:]}"
    assert "Traceback" not in out + errors, errors[-6000:]

    # 2. status and the queries printed their tables.
    assert "raw_order" in out and "quarantine" in out
    # 3. forget found the person and verified nothing of them is left.
    assert re.search(r"forgot profile \S+", out), out[-3000:]
    # 4. the worker read every produced event and committed them.
    status = (tmp_path / ".lastmile" / "stream" / "status.json").read_text()
    assert '"read": 20000,' in status
    # 5. the API answered the recommendations request with JSON for that person.
    assert re.search(r'"oneid":\s*"[^"]+"', out) and '"items"' in out, out[-3000:]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-x", "-q"]))
