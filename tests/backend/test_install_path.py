"""One install path: the Dockerfile runs the README's ``scripts/setup.sh`` rather than its own pip steps."""

from __future__ import annotations

import re

from tests.conftest import REPO


def _instructions(text: str) -> list[str]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(x for x in text.splitlines() if not x.lstrip().startswith("#")))
    return [x.strip() for x in joined.splitlines() if x.strip()]


def test_the_readme_installs_with_setup_sh():
    assert "bash scripts/setup.sh" in (REPO / "README.md").read_text()


def test_the_dockerfile_runs_setup_sh_and_nothing_else_installs_python_packages():
    steps = _instructions((REPO / "Dockerfile").read_text())
    runs = [s for s in steps if s.startswith("RUN ")]
    assert any(re.search(r"\bscripts/setup\.sh\b", s) for s in runs), runs
    assert not [s for s in runs if re.search(r"\bpip3?\b|\buv\b|\bpoetry\b|\bconda\b", s)], (
        "the Dockerfile installs Python packages itself: put the step in scripts/setup.sh instead"
    )
    # the venv that setup.sh creates is the one the image runs
    setup = (REPO / "scripts/setup.sh").read_text()
    assert re.search(r"^\s*\[ -d \.venv \] \|\| .* -m venv \.venv", setup, re.MULTILINE)
    assert any(re.match(r"ENV PATH=/app/\.venv/bin:", s) for s in steps), steps
    assert "WORKDIR /app" in steps


def test_a_local_venv_is_not_copied_into_the_image():
    """setup.sh reuses an existing .venv: one copied from the build context would be the host's, not a fresh one."""
    ignored = [x.strip().rstrip("/") for x in (REPO / ".dockerignore").read_text().splitlines()]
    assert ".venv" in ignored
