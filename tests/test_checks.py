"""System checks: `manage.py check --deploy` refuses a sandbox with a layer missing."""

import os
import subprocess
import sys

import pytest
from django.core.checks import run_checks

from tests.conftest import BASE_DIR


def check_ids(deploy: bool) -> set[str]:
    return {m.id for m in run_checks(include_deployment_checks=deploy, tags=["security"])}


def manage_check_deploy(**env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), "check", "--deploy"],
        env={**os.environ, **env}, cwd=BASE_DIR, capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_check_deploy_fails_while_the_python_guards_are_off():
    off = manage_check_deploy(LOOPS_PYTHON_GUARDS="0")
    assert off.returncode != 0
    assert "loops.E003" in off.stderr
    on = manage_check_deploy(LOOPS_PYTHON_GUARDS="1")
    assert "loops.E003" not in on.stderr + on.stdout


def test_more_than_one_process_per_execution_is_flagged_for_deploy(settings):
    assert "loops.W003" not in check_ids(deploy=True)
    settings.LOOPS_MAX_PROCESSES = 4
    assert "loops.W003" in check_ids(deploy=True)


@pytest.mark.skipif(os.getuid() != 0, reason="the sandbox user matters when the worker is root")
def test_loop_code_never_runs_as_root(settings):
    assert "loops.E004" not in check_ids(deploy=False)
    settings.LOOPS_SANDBOX_USER = "root"
    assert "loops.E004" in check_ids(deploy=False)
    settings.LOOPS_SANDBOX_USER = "0"
    assert "loops.E004" in check_ids(deploy=False)


@pytest.mark.skipif(os.getuid() != 0, reason="the sandbox user matters when the worker is root")
def test_a_missing_sandbox_user_is_a_warning(settings):
    settings.LOOPS_SANDBOX_USER = "no-such-user-here"
    assert "loops.W002" in check_ids(deploy=False)
