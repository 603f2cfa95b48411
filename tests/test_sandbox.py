"""The sandbox: every escape attempt ends in a failed verdict with a reason, never a hang."""

from __future__ import annotations

import json
import os
import time

import pytest

from aflowctl.errors import SandboxError
from aflowctl.workflow import sandbox
from aflowctl.workflow.sandbox import check_solution, run_python

pytestmark = pytest.mark.timeout(60)


def test_plain_code_runs_and_returns_output():
    r = run_python("print(6 * 7)")
    assert r.ok and r.reason == "ok" and r.returncode == 0
    assert r.stdout.strip() == "42"
    assert r.duration_s < 5


def test_stdin_is_passed():
    r = run_python("import sys; print(sys.stdin.read().upper())", stdin="abc")
    assert r.ok and r.stdout.strip() == "ABC"


def test_large_stdin_that_is_never_read_does_not_block():
    r = run_python("print('done')", stdin="x" * (2 * 1024 * 1024), timeout_s=5)
    assert r.ok and r.stdout.strip() == "done"


def test_infinite_loop_is_killed_by_wall_clock():
    t0 = time.monotonic()
    r = run_python("while True:\n    pass\n", timeout_s=1.5)
    assert time.monotonic() - t0 < 10
    assert not r.ok and r.kind == "timeout" and r.returncode == -9


def test_sleeping_code_is_killed_too():
    r = run_python("import time\ntime.sleep(60)\n", timeout_s=1)
    assert not r.ok and r.kind == "timeout"
    assert r.duration_s < 5


def test_fork_bomb_cannot_fork_and_ends():
    # Bounded on purpose: at most 200 attempts, each fails; the loop never spins forever.
    code = (
        "import os\nok = 0\n"
        "for _ in range(200):\n"
        "    try:\n        pid = os.fork()\n    except OSError:\n        continue\n"
        "    if pid == 0:\n        os._exit(0)\n    ok += 1\n"
        "print('forked', ok)\n"
    )
    r = run_python(code, timeout_s=5)
    if sandbox.describe()["seccomp"]:
        assert r.stdout.strip() == "forked 0"
    assert r.duration_s < 6


def test_unbounded_fork_bomb_fails_fast():
    if not sandbox.describe()["seccomp"]:
        pytest.skip("no seccomp on this platform: a real fork bomb is not safe to test")
    r = run_python("import os\nwhile True:\n    os.fork()\n", timeout_s=3)
    assert not r.ok and r.kind == "exception" and "PermissionError" in r.reason


def test_os_system_and_subprocess_cannot_run_commands(tmp_path):
    marker = tmp_path / "pwned"
    r = run_python(f"import os\nrc = os.system('touch {marker}')\nassert rc == 0, rc\n", timeout_s=5)
    assert not r.ok and r.kind == "exception"
    assert not marker.exists()
    r = run_python("import subprocess\nsubprocess.run(['true'], check=True)\n", timeout_s=5)
    assert not r.ok and "PermissionError" in r.reason


def test_ten_gigabyte_allocation_is_a_memory_failure():
    r = run_python("x = bytearray(10 * 1024 ** 3)\nprint(len(x))\n", memory_mb=512, timeout_s=10)
    assert not r.ok and r.kind == "memory"


def test_segfault_is_reported_as_signal():
    r = run_python("import ctypes\nctypes.string_at(0)\n", timeout_s=5)
    assert not r.ok and r.kind == "signal" and "SIGSEGV" in r.reason and r.returncode == -11


def test_sys_exit_nonzero_fails_and_zero_cannot_pass_a_check():
    r = run_python("import sys\nsys.exit(3)\n")
    assert not r.ok and r.kind == "exit" and r.returncode == 3
    # A solution that exits 0 before the tests run must not pass them.
    sol = "import sys\nsys.exit(0)\ndef f():\n    return 1\n"
    r = check_solution(sol, "def check(candidate):\n    assert candidate() == 2\n", "f")
    assert not r.ok and r.kind == "exit"
    r = check_solution("import os\nos._exit(0)\n", "assert False\n", "f")
    assert not r.ok and r.kind == "exit"


def test_huge_output_is_capped_and_fails():
    r = run_python("while True:\n    print('x' * 1000)\n", timeout_s=10, max_output_bytes=10000)
    assert not r.ok and r.kind == "output_limit"
    assert len(r.stdout) <= 10000
    assert r.duration_s < 10


def test_environment_has_no_secrets_and_cwd_is_scratch(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-sentinel-should-not-leak-123456")
    r = run_python("import os, json\nprint(json.dumps({'env': dict(os.environ), 'cwd': os.getcwd()}))\n")
    data = json.loads(r.stdout)
    assert "sk-sentinel" not in r.stdout
    assert "OPENAI_API_KEY" not in data["env"]
    assert os.path.basename(data["cwd"]).startswith("aflowctl-sbx-")
    assert data["env"]["HOME"] == data["cwd"]
    assert not os.path.exists(data["cwd"])  # removed afterwards


def test_cannot_signal_other_processes_or_raise_limits():
    if not sandbox.describe()["seccomp"]:
        pytest.skip("no seccomp on this platform")
    r = run_python(f"import os, signal\nos.kill({os.getpid()}, signal.SIGTERM)\n")
    assert not r.ok and "PermissionError" in r.reason
    r = run_python("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n")
    assert not r.ok
    r = run_python("import os, signal, threading\nt = threading.Thread(target=lambda: None)\nt.start(); t.join()\nprint('threads ok')\n")
    assert r.ok and "threads ok" in r.stdout


def test_bad_limits_raise_sandbox_error():
    with pytest.raises(SandboxError):
        run_python("pass", timeout_s=0)
    with pytest.raises(SandboxError):
        run_python("pass", memory_mb=1)


# ---------------------------------------------------------------- check_solution

HE_SOL = "def add(a, b):\n    return a + b\n"
HE_TEST = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n"


def test_check_humaneval_style_pass_and_fail():
    assert check_solution(HE_SOL, HE_TEST, "add").ok
    r = check_solution("def add(a, b):\n    return a - b\n", HE_TEST, "add")
    assert not r.ok and r.kind == "exception" and "AssertionError" in r.reason and "candidate(1, 2) == 3" in r.reason


def test_check_mbpp_style_and_plain_asserts_and_lists():
    mbpp_test = "def check():\n    assert add(2, 2) == 4\n"
    assert check_solution(HE_SOL, mbpp_test, "add").ok
    assert not check_solution("def add(a, b):\n    return 0\n", mbpp_test, "add").ok
    assert check_solution(HE_SOL, "assert add(1, 1) == 2\n", "add").ok
    assert check_solution(HE_SOL, ["assert candidate(1, 1) == 2"], "add").ok is False  # no `candidate` in scope
    assert check_solution(HE_SOL, ["candidate = add", "assert candidate(1, 1) == 2"], "add").ok


def test_check_missing_entry_point_and_syntax_error():
    r = check_solution("def other():\n    pass\n", HE_TEST, "add")
    assert not r.ok and r.kind == "missing"
    r = check_solution("def add(a, b) return a\n", HE_TEST, "add")
    assert not r.ok and "SyntaxError" in r.reason


def test_check_solution_timeout_and_prints_do_not_confuse_the_verdict():
    r = check_solution("def add(a, b):\n    while True:\n        pass\n", HE_TEST, "add", timeout_s=1.5)
    assert not r.ok and r.kind == "timeout"
    r = check_solution("print('passed', end='')\ndef add(a, b):\n    print('hi')\n    return a + b\n", HE_TEST, "add")
    assert r.ok and "hi" in r.stdout


def _rows(path, n):
    with open(path) as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


def test_real_humaneval_and_mbpp_canonical_solutions(shared_data):
    for row in _rows(shared_data / "humaneval_validate.jsonl", 3):
        sol = row["prompt"] + row["canonical_solution"]
        assert check_solution(sol, row["test"], row["entry_point"]).ok, row["task_id"]
        bad = row["prompt"] + "    return None\n"
        assert not check_solution(bad, row["test"], row["entry_point"]).ok
    for row in _rows(shared_data / "mbpp_validate.jsonl", 3):
        assert check_solution(row["code"], row["test"], row["entry_point"]).ok, row["task_id"]


def test_async_variant_runs_concurrently():
    import asyncio

    async def main():
        t0 = time.monotonic()
        rs = await asyncio.gather(*[sandbox.run_python_async("import time; time.sleep(0.5)") for _ in range(4)])
        return rs, time.monotonic() - t0

    rs, dt = asyncio.run(main())
    assert all(r.ok for r in rs)
    assert dt < 1.9  # ran in parallel, not 4 x 0.5 s


def test_root_runs_code_as_nobody_when_the_interpreter_allows(tmp_path):
    """As root the child drops to `nobody`; checked with a system Python that `nobody`
    can execute (this venv's interpreter may live under a private /root)."""
    import shutil
    import subprocess
    from pathlib import Path

    system_py = shutil.which("python3", path="/usr/bin:/usr/local/bin")
    from aflowctl.sandbox.confine import reachable_by_others

    if os.geteuid() != 0 or system_py is None or not reachable_by_others(Path(system_py)):
        pytest.skip("needs root and a world-executable system python3")
    target = tmp_path / "owned-by-root"
    target.mkdir(mode=0o755)
    child = f"import os\nprint(os.getuid())\nopen({str(target / 'x')!r}, 'w')\n"
    script = (
        "from aflowctl.workflow import sandbox\n"
        f"r = sandbox.run_python({child!r})\n"
        "print(sandbox.describe()['run_as_uid'], r.stdout.strip(), r.kind)\n"
    )
    repo = Path(sandbox.__file__).resolve().parents[2]
    out = subprocess.run([system_py, "-c", script], env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    uid, child_uid, kind = out.stdout.split()
    assert uid == child_uid != "0" and kind == "exception"
    assert not (target / "x").exists()


def test_generated_code_imports_sympy_but_reads_no_package_data():
    """The Programmer prompt offers sympy: its code is readable in the sandbox; the data
    files packages ship (aflowctl's sample splits, with answers) are not."""
    import importlib.util
    from pathlib import Path

    if importlib.util.find_spec("sympy") is None:
        pytest.skip("sympy is not installed")
    caps = sandbox.describe()
    if not caps["ok"]:
        pytest.skip(f"sandbox unavailable here: {caps['problems']}")
    res = run_python("import sympy\nprint(sympy.Integer(6) * 7)\n", timeout_s=30)
    assert res.ok and res.stdout.strip() == "42", res
    sample = Path(sandbox.__file__).resolve().parents[1] / "benchmarks" / "sample" / "gsm8k_sample.jsonl"
    res = run_python(f"print(open({str(sample)!r}).read()[:20])\n")
    assert not res.ok and "PermissionError" in res.stderr and "question" not in res.stdout
    res = run_python("import pluggy\n")  # site-packages beyond what generated code is offered
    assert not res.ok and ("PermissionError" in res.stderr or "ModuleNotFoundError" in res.stderr)
