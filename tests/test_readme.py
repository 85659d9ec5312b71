"""Every shell command and Python block of README.md runs, as written, with sizes shrunk.

The README's fenced ``bash``/``sh``/``shell``/``console`` and ``python`` blocks are run section
by section (``## `` headings), in document order, as one bash script per section, in a
temporary working folder that links every top-level entry of the repository except the
output folders (``out/``, ``runs/``): what a command writes lands in the temporary folder, and
a Python block can read what a command above it in its section wrote. Python blocks go to
the test's interpreter; ``captum-vit`` and ``torchrun`` come from its ``bin`` folder. A
command left running in the background (``... &``) is stopped when its section ends.

Two tables keep the test honest and short; both are checked against the README:

- :data:`SHRINK`: text substitutions that make a command small enough for the test. The
  README's "Testing" section prints the same table.
- :data:`SKIP`: the few commands that cannot run here, each with the reason.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHELL_LANGUAGES = ("bash", "sh", "shell", "console")

#: (as written in the README, as run by the test). Applied to every shell command.
SHRINK: tuple[tuple[str, str], ...] = (
    # The leaderboard's LTX and IIA rows alone cost minutes even on 4 images.
    ("--models synthetic-vit --pairs 64", "--models synthetic-vit --methods gae,pltx,oracle:gt,oracle:random --pairs 64"),
    ("--num-images 256", "--num-images 4 --pairs 2"),
    ("--num-images 200", "--num-images 4"),
    ("make demo", "make demo DEMO_ARGS='--num-images 1 --num-eval 2 --repeats 1 --methods gae,rollout,pltx'"),
    ("--epochs 30", "--steps 2 --batch-size 8 --val-size 8"),
    ("--epochs 5", "--max-steps 2 --batch-size 8 --val-size 8 --held-out 8"),
)
#: Commands that are not run, by their text without the trailing comment, with the reason.
SKIP: dict[str, str] = {
    "make test": "runs the test suite, which holds this test",
    "captum-vit export --model synthetic-vit --precision fp16 --format tensorrt --out out/e16.onnx": (
        "needs TensorRT and a CUDA GPU"
    ),
}
#: Not linked into the working folder: where the README's commands write, and git's data.
OUTPUTS = ("out", "runs", ".git")


@dataclass(frozen=True)
class Block:
    section: str
    line: int  # README line of the block's first content line
    language: str
    text: str


def readme_blocks(text: str) -> list[Block]:
    """The fenced code blocks of ``text``, with their ``## `` section and line number.

    Examples
    --------
    >>> readme_blocks("## A\\n```bash\\nls\\n```\\n")
    [Block(section='A', line=3, language='bash', text='ls')]
    """
    blocks, section = [], "(top)"
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("## "):
            section = lines[i][3:].strip()
        fence = re.match(r"^```\s*([\w+-]*)", lines[i])
        if fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            blocks.append(Block(section, i + 2, fence.group(1).lower(), "\n".join(lines[i + 1 : end])))
            i = end
        i += 1
    return blocks


def shell_commands(block: Block) -> list[tuple[int, str]]:
    """``(line, command)`` for each command of a shell block (continuations joined, console
    prompts stripped, comment lines and console output dropped)."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for offset, raw in enumerate(block.text.splitlines()):
        line = raw.rstrip()
        if block.language == "console" and not pending:
            if not line.startswith("$ "):
                continue
            line = line[2:]
        if not pending:
            start = block.line + offset
            if not line.strip() or line.lstrip().startswith("#"):
                continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        out.append((start, pending + line.strip()))
        pending = ""
    return out


def without_comment(command: str) -> str:
    return re.sub(r"\s+#.*$", "", command).strip()


def shrink(command: str) -> str:
    for written, run in SHRINK:
        command = command.replace(written, run)
    if command.startswith("make "):  # never (re)install the environment; use the test's interpreter
        command = 'make -o .venv/.installed BIN="${PYTHON%/*}" ' + command[len("make ") :]
    return command


def section_script(blocks: list[Block]) -> str:
    """One bash script running a section's blocks in order."""
    lines = ["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT"]
    for block in blocks:
        if block.language in SHELL_LANGUAGES:
            for line, command in shell_commands(block):
                reason = SKIP.get(without_comment(command))
                note = f"README.md:{line}: " + (f"skipped ({reason}): " if reason else "") + command
                lines.append(f"echo {shlex.quote('>>> ' + note)}")
                if reason is None:
                    lines.append(shrink(command))
        elif block.language == "python":
            assert "README_PYTHON" not in block.text
            lines += [f"echo '>>> README.md:{block.line}: python block'", "\"$PYTHON\" - <<'README_PYTHON'"]
            lines += [block.text, "README_PYTHON"]
    return "\n".join(lines) + "\n"


def _sections() -> dict[str, list[Block]]:
    sections: dict[str, list[Block]] = {}
    for block in readme_blocks(README.read_text()):
        if block.language in (*SHELL_LANGUAGES, "python"):
            sections.setdefault(block.section, []).append(block)
    return sections


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize("section", list(_sections()))
def test_readme_section_runs(section: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in OUTPUTS:
            (work / entry.name).symlink_to(entry)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHON": sys.executable,
        "MPLBACKEND": "Agg",
        "PET_MASTER_PORT": str(_free_port()),  # torchrun's --master-port, so parallel runs do not collide
        "CAPTUM_VIT_HOME": str(tmp_path / "home"),  # registered artefacts stay in the test's folder
    }
    script = section_script(_sections()[section])
    done = subprocess.run(
        ["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    log = done.stdout + done.stderr
    started = [line for line in done.stdout.splitlines() if line.startswith(">>> ")]
    assert done.returncode == 0, f"{started[-1] if started else script}\n{log[-4000:]}"


def test_the_tables_match_the_readme() -> None:
    text = README.read_text()
    commands = [
        without_comment(c) for b in readme_blocks(text) if b.language in SHELL_LANGUAGES for _, c in shell_commands(b)
    ]
    for command in SKIP:
        assert command in commands, f"SKIP lists a command the README no longer has: {command}"
    for written, run in SHRINK:
        assert any(written in c for c in commands), f"SHRINK rewrites text no README command has: {written}"
        assert f"`{written}` → `{run}`" in text, f"the README's Testing section must print: `{written}` → `{run}`"
    torchrun = [c for c in commands if c.startswith("torchrun ")]
    assert torchrun and all(c.startswith("torchrun --nproc-per-node 2 -m captum_vit.cli ") for c in torchrun)
    assert len(SKIP) <= 3


def test_shell_command_extraction() -> None:
    block = Block("S", 10, "console", "$ captum-vit demo \\\n    --out x  # a comment\noutput line\n$ ls")
    assert shell_commands(block) == [(10, "captum-vit demo --out x  # a comment"), (13, "ls")]
    assert without_comment("captum-vit demo --out x  # a comment") == "captum-vit demo --out x"
    assert shrink("make demo") == 'make -o .venv/.installed BIN="${PYTHON%/*}" demo DEMO_ARGS=' + shlex.quote(
        "--num-images 1 --num-eval 2 --repeats 1 --methods gae,rollout,pltx"
    )
