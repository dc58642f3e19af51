"""Imports point one way (STYLE.md 7): import-linter's contracts in pyproject.toml hold, and no
module of the project imports itself through others (scripts/import_cycles.py). Both read the
code, imports inside functions included; CI also runs them as a lint step."""

import shutil
import subprocess
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
PACKAGES = ("accounts", "loops", "loops_project", "runs")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [Path(sys.executable).parent / "lint-imports", "--no-cache"],
        cwd=root, capture_output=True, text=True, check=False,
    )  # fmt: skip


def import_cycles(root: Path) -> subprocess.CompletedProcess:
    # A process of its own: this one has the packages imported already, from BASE_DIR.
    return subprocess.run(
        [sys.executable, BASE_DIR / "scripts" / "import_cycles.py", root],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_the_import_contracts_hold():
    result = lint_imports(BASE_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_module_imports_itself_through_others():
    result = import_cycles(BASE_DIR)
    assert result.returncode == 0, result.stderr


def test_an_upward_import_inside_a_function_breaks_a_contract_and_is_a_cycle(tmp_path):
    for package in PACKAGES:
        shutil.copytree(
            BASE_DIR / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(BASE_DIR / "pyproject.toml", tmp_path)
    models = tmp_path / "runs" / "models.py"
    models.write_text(models.read_text() + "\n\ndef _upward():\n    from runs import services\n")

    contracts = lint_imports(tmp_path)
    assert contracts.returncode == 1, contracts.stdout
    assert "runs.models is not allowed to import runs.services" in contracts.stdout

    cycles = import_cycles(tmp_path)
    assert cycles.returncode == 1
    assert "runs.models (line" in cycles.stderr
    assert "imports runs.services" in cycles.stderr
