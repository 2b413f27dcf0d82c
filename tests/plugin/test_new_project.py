"""docs/integration.md, followed literally by a new user: the wheel installed into a fresh venv,
``django-admin startproject``, then every code block of the page in order. Then the project is
put to work: 20 locked tasks whose same-key runs must not overlap, a chord of 10, an admin page
and the OpenAPI schema. The test fails if any step of the page is wrong.

How the page's blocks are run (each is preceded by ``<!-- test: ACTION [PATH] -->``):

- ``run``: each line is a shell command run in the project directory with the venv first on
  ``PATH``; a line ending in ``&`` starts a background process (stopped at the end), and
  ``export NAME=...`` is evaluated once and kept for the following commands;
- ``write PATH`` / ``append PATH``: the block is the file's new content / is added to its end;
- ``shell``: the block is fed to ``python manage.py shell``.

The only substitutions: the wheel built from this checkout for ``raftsync[all]`` (pinned by the
constraints file), and free ports for 7001-7003 and 8000.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from plugin_helpers import ROOT, clean_env, pip_for

pytestmark = [pytest.mark.realprocess]

DOC = ROOT / "docs" / "integration.md"
STEP = re.compile(r"<!-- test: (\w+)(?: (\S+))? -->\n```(\w+)\n(.*?)```", re.S)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Project:
    """A shell-like runner of the page's steps inside one project directory."""

    def __init__(self, home: Path, bin_dir: Path, wheel: Path, constraints: Path) -> None:
        self.home, self.bin_dir = home, bin_dir
        self.wheel, self.constraints = wheel, constraints
        self.env = clean_env(
            PATH=f"{bin_dir}:{os.environ['PATH']}", VIRTUAL_ENV=str(bin_dir.parent)
        )
        self.ports = {str(p): str(_free_port()) for p in (7001, 7002, 7003, 8000)}
        self.background: list[subprocess.Popen[bytes]] = []
        self.transcript: list[str] = []

    def ported(self, text: str) -> str:
        return re.sub(r"\b(7001|7002|7003|8000)\b", lambda m: self.ports[m.group(1)], text)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.ports['8000']}{path}"

    # -- actions -------------------------------------------------------------------------------

    def step(self, action: str, path: str | None, code: str) -> None:
        code = self.ported(code)
        self.transcript.append(f"--- {action} {path or ''}\n{code}")
        if action == "run":
            for line in _lines(code):
                self.command(line)
        elif action in ("write", "append"):
            target = self.home / path
            mode = "a" if action == "append" else "w"
            with target.open(mode) as f:
                f.write(("\n" if mode == "a" else "") + code)
        elif action == "shell":
            out = self.sh(f"{self.bin_dir / 'python'} manage.py shell", stdin=code, timeout=180)
            self.transcript.append(out)
        else:
            raise AssertionError(f"unknown step {action!r} in {DOC}")

    def command(self, line: str) -> None:
        if line.startswith("pip install"):
            assert shlex.split(line)[2:] == ["raftsync[all]"], line
            # The same package, from the wheel this checkout built (pip from outside the venv).
            pip = " ".join(pip_for(self.bin_dir))
            spec = f"raftsync[all] @ {self.wheel.as_uri()}"
            return self.sh(f"{pip} install -q -c {self.constraints} '{spec}'")
        export = re.fullmatch(r"export (\w+)=(.*)", line)
        if export:
            name = export.group(1)
            value = self.sh(f'VALUE={export.group(2)}; printf %s "$VALUE"')
            self.env[name] = value
            return None
        if line.endswith("&"):
            proc = subprocess.Popen(
                line[:-1],
                shell=True,
                cwd=self.home,
                env=self.env,
                start_new_session=True,
                stdout=(self.home / f"bg{len(self.background)}.log").open("w"),
                stderr=subprocess.STDOUT,
            )
            self.background.append(proc)
            return None
        self.transcript.append(self.sh(line))
        return None

    def sh(self, command: str, stdin: str | None = None, timeout: float = 180) -> str:
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=self.home,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            pytest.fail(
                f"`{command}` exited {done.returncode}\n{done.stdout}\n{done.stderr}\n"
                + self.logs()
            )
        return done.stdout

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text()[-3000:]}"
            for log in sorted(self.home.glob("bg*.log"))
        )

    def stop(self) -> None:
        for proc in reversed(self.background):  # worker and web first, then the nodes
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.background:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _lines(code: str) -> list[str]:
    """Commands of a shell block: comments dropped, ``\\`` continuations joined."""
    lines, pending = [], ""
    for raw in code.splitlines():
        line = (pending + raw).strip() if pending else raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


# What the page's project must then do; run through `manage.py shell` like the page's own demo.
WORKLOAD = """
import json
from celery import chord
from reports.tasks import build_report, count_pages, total

# 20 tasks, pairs sharing a key: customers 0..9, twice each.
results = [build_report.delay(i // 2, 0.3) for i in range(20)]
runs = [r.get(timeout=120) for r in results]
pages = chord(count_pages.s({"customer_id": i}) for i in range(10))(total.s()).get(timeout=120)
print("WORKLOAD " + json.dumps({"runs": runs, "chord": pages}))
"""


def test_a_new_project_follows_the_integration_guide(
    plugin_venv: Path, dists: dict[str, Path], tmp_path: Path
) -> None:
    steps = STEP.findall(DOC.read_text())
    assert len(steps) >= 10, "the page lost its test markers"
    constraints = ROOT / os.environ.get("RAFTSYNC_PLUGIN_CONSTRAINTS", "requirements.txt")
    home = tmp_path / "project"
    home.mkdir()
    project = Project(home, plugin_venv, dists["wheel"], constraints)
    try:
        for action, path, _lang, code in steps:
            project.step(action, path or None, code)
        out = project.sh(f"{plugin_venv / 'python'} manage.py shell", stdin=WORKLOAD)
        report = json.loads(out.split("WORKLOAD ", 1)[1])
    finally:
        project.stop()

    runs = report["runs"]
    assert len(runs) == 20
    for customer in range(10):
        mine = sorted((r for r in runs if r["customer_id"] == customer), key=lambda r: r["token"])
        assert len(mine) == 2
        first, second = mine
        assert first["finished"] <= second["started"], (customer, mine)  # never overlapped
        assert second["token"] > first["token"]
    assert report["chord"] == 19
    schema = (home / "schema.yaml").read_text()
    assert "openapi:" in schema and "/api/locks/{name}/acquire/" in schema
    assert "raftsync coordination API" in schema
