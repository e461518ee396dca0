from __future__ import annotations

import subprocess
import sys

import lipcheck


def test_version_from_the_shell() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lipcheck", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"lipcheck {lipcheck.__version__}"
