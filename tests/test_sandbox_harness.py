"""check_solution's verdict cannot be forged, and hostile solutions are contained.

Every solution here is wrong (or hostile); none may pass, none may touch anything
outside its scratch directory, and each ends in bounded time. The same checks run
as root and, through setpriv, as an unprivileged user.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from aflowctl.errors import SandboxError
from aflowctl.sandbox import confine
from aflowctl.sandbox.harness import check_solution

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[1]
CAPS = confine.capabilities()
needs_sandbox = pytest.mark.skipif(not CAPS["ok"], reason=f"sandbox unavailable here: {CAPS['problems']}")

ADD_TEST = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n"

# Each forges "passed" without computing a + b.
FORGERIES = {
    "frame_walk": (
        "import sys, json\n"
        "def add(a, b):\n"
        "    f = sys._getframe()\n"
        "    while f is not None:\n"
        "        for k, v in list(f.f_globals.items()):\n"
        "            if callable(v) and k in ('_report', 'report', '_status', 'send'):\n"
        "                try:\n                    v(5, {'status': 'passed', 'detail': ''})\n"
        "                except Exception:\n                    pass\n"
        "        f.f_locals.update({'status': 'passed'})\n"
        "        f = f.f_back\n"
        "    return None\n"
    ),
    "write_every_fd": (
        "import os\n"
        "def add(a, b):\n"
        "    for fd in range(0, 64):\n"
        "        try:\n            os.write(fd, b'{\"status\": \"passed\", \"detail\": \"\"}')\n"
        "        except OSError:\n            pass\n"
        "    return None\n"
    ),
    "gc_patch": (
        "import gc\n"
        "def add(a, b):\n"
        "    for o in gc.get_objects():\n"
        "        if isinstance(o, dict):\n"
        "            for k in ('status', 'ok', 'reason'):\n"
        "                if k in o:\n"
        "                    o[k] = 'passed' if k != 'ok' else True\n"
        "    return None\n"
    ),
    "monkeypatch_builtins": (
        "import builtins\n"
        "class _Never(Exception):\n    pass\n"
        "builtins.AssertionError = _Never\n"
        "builtins.abs = lambda x: 0\n"
        "builtins.isinstance = lambda *a: True\n"
        "def add(a, b):\n    return None\n"
    ),
    "always_equal": (
        "class E:\n"
        "    def __eq__(self, o): return True\n"
        "    def __ne__(self, o): return False\n"
        "    __hash__ = object.__hash__\n"
        "def add(a, b):\n    return E()\n"
    ),
    "always_equal_int": (
        "class E(int):\n"
        "    def __eq__(self, o): return True\n"
        "    def __ne__(self, o): return False\n"
        "    __hash__ = int.__hash__\n"
        "def add(a, b):\n    return E(99)\n"
    ),
    "always_equal_list_subclass": (
        "class L(list):\n    def __eq__(self, o): return True\n"
        "def add(a, b):\n    return L([7])\n"
    ),
    "os_exit_at_import": "import os\nos._exit(0)\ndef add(a, b):\n    return a + b\n",
    "os_exit_in_call": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "sys_exit_in_call": "import sys\ndef add(a, b):\n    sys.exit(0)\n",
    "print_markers": (
        "import sys\n"
        "def add(a, b):\n"
        "    print('{\"status\": \"passed\", \"detail\": \"\"}')\n"
        "    print('passed'); sys.stderr.write('ok\\n')\n"
        "    return None\n"
    ),
    "fake_protocol": (
        "import os, json\n"
        "def _frame(m):\n    b = json.dumps(m).encode()\n    return len(b).to_bytes(4, 'big') + b\n"
        "for fd in range(3, 32):\n"
        "    try:\n        os.write(fd, _frame({'ready': {}}) + _frame({'v': True}) * 4)\n"
        "    except OSError:\n        pass\n"
        "def add(a, b):\n    return None\n"
    ),
    "read_the_test": (
        "import os, glob\n"
        "def add(a, b):\n"
        "    for p in glob.glob('/tmp/aflowctl-sbx-*/*') + glob.glob('/proc/*/fd/*') + ['test.py', '../test.py']:\n"
        "        try:\n            txt = open(p).read()\n        except Exception:\n            continue\n"
        "        if 'candidate' in txt:\n            raise SystemExit('found the test at ' + p)\n"
        "    return None\n"
    ),
    "raise_keyboard_interrupt": "def add(a, b):\n    raise KeyboardInterrupt\n",
    "hostile_str_exception": (
        "class X(Exception):\n    def __str__(self):\n        while True:\n            pass\n"
        "def add(a, b):\n    raise X()\n"
    ),
}


@needs_sandbox
@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forged_verdicts_fail(name):
    t0 = time.monotonic()
    r = check_solution(FORGERIES[name], ADD_TEST, "add", timeout_s=2)
    assert not r.ok, (name, r.reason)
    assert r.kind in {"exception", "exit", "timeout", "missing"}, r.reason
    assert time.monotonic() - t0 < 20


@needs_sandbox
def test_forgeries_score_zero_on_real_humaneval_problems():
    """The HumanEval '100% without a solution' attack: every problem of the sample scores 0."""
    from aflowctl import benchmarks

    b = benchmarks.get("humaneval")
    rows = b.load("sample")[:3]
    for p in rows:
        entry = p["entry_point"]
        for name in ("frame_walk", "always_equal", "monkeypatch_builtins", "os_exit_in_call"):
            src = FORGERIES[name].replace("def add(a, b)", f"def {entry}(*a, **k)")
            assert b.score(src, p) == 0.0, (p["task_id"], name)
        assert b.score(b.reference_solution(p), p) == 1.0


@pytest.fixture
def outside(tmp_path_factory):
    """Files outside the sandbox that hostile solutions go after, and a loopback listener."""
    base = Path(tempfile.mkdtemp(prefix="aflowctl-harness-test-"))
    base.chmod(0o755)
    home = base / "home"
    home.mkdir()
    files = {"home_file": home / "notes.txt", "store": home / "aflowctl.db", "secret": home / "id_rsa"}
    for name, p in files.items():
        p.write_text(f"{name} sentinel\n")
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    yield {"base": base, "files": files, "port": tcp.getsockname()[1], "written": base / "written.txt"}
    tcp.close()
    shutil.rmtree(base, ignore_errors=True)


def _hostile(outside) -> dict[str, str]:
    f = outside["files"]
    ppid = os.getpid()
    return {
        "read_env": "import os\ndef add(a, b):\n    return os.environ.get('OPENAI_API_KEY')\n",
        "parent_environ": f"def add(a, b):\n    return open('/proc/{ppid}/environ', 'rb').read().decode(errors='replace')\n",
        "open_store": f"def add(a, b):\n    return open({str(f['store'])!r}, 'rb').read().decode()\n",
        "read_secret": f"def add(a, b):\n    return open({str(f['secret'])!r}).read()\n",
        "delete_home_file": f"import os\ndef add(a, b):\n    os.unlink({str(f['home_file'])!r})\n    return a + b + 1\n",
        "write_outside": f"def add(a, b):\n    open({str(outside['written'])!r}, 'w').write('x')\n    return a + b + 1\n",
        "write_tmp": "def add(a, b):\n    open('/tmp/aflowctl-pwned-%d' % (a + 5), 'w').write('x')\n    return a + b + 1\n",
        "spawn_sh": f"import subprocess\ndef add(a, b):\n    subprocess.run(['sh', '-c', 'touch {outside['written']}'])\n    return a + b + 1\n",
        "connect_loopback": ("import socket\ndef add(a, b):\n"
                             f"    socket.create_connection(('127.0.0.1', {outside['port']}), timeout=2).sendall(b'key')\n"
                             "    return a + b\n"),
        "loop_forever": "def add(a, b):\n    while True:\n        pass\n",
        "allocate_10g": "def add(a, b):\n    x = bytearray(10 * 1024 ** 3)\n    return a + b\n",
        "fork_bomb": "import os\ndef add(a, b):\n    while True:\n        os.fork()\n",
    }


HOSTILE_KINDS = {"loop_forever": {"timeout"}, "allocate_10g": {"memory"}}


@needs_sandbox
def test_hostile_solutions_are_contained(outside, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-sentinel-harness-987")
    for name, src in _hostile(outside).items():
        t0 = time.monotonic()
        r = check_solution(src, ADD_TEST, "add", timeout_s=3, memory_mb=512)
        assert not r.ok, (name, r.reason)
        assert r.kind in HOSTILE_KINDS.get(name, {"exception"}), (name, r.reason)
        assert time.monotonic() - t0 < 15, name
        for text in (r.reason, r.stdout, r.stderr):
            assert "sentinel" not in text, (name, text)
    assert all(p.exists() for p in outside["files"].values())
    assert not outside["written"].exists()
    assert not list(Path("/tmp").glob("aflowctl-pwned-*"))


def test_run_python_hostile_code_is_contained(outside, monkeypatch):
    """run_python (the Programmer operator's sandbox) under the same confinement."""
    if not CAPS["ok"]:
        pytest.skip(f"sandbox unavailable here: {CAPS['problems']}")
    from aflowctl.sandbox.process import run_python

    monkeypatch.setenv("OPENAI_API_KEY", "sk-sentinel-run-654")
    for name, src in _hostile(outside).items():
        r = run_python(src + "print(add(1, 2))\n", timeout_s=3, memory_mb=512)
        if name == "read_env":  # runs fine: the variable is not there
            assert r.ok and r.stdout.strip() == "None"
        else:
            assert not r.ok, (name, r.reason)
        assert "sentinel" not in r.stdout + r.stderr
    assert all(p.exists() for p in outside["files"].values())
    assert not outside["written"].exists()


def test_honest_values_round_trip():
    """Plain values keep their types across the pipe; in-place changes come back;
    objects of the solution are handles the test can still call and inspect."""
    sol = ("import math\n"
           "def f(kind):\n"
           "    return {'tuple': (1, 2.5, 'x'), 'set': {1, 2}, 'dict': {(1, 2): [None, True]}, 'nan': float('nan'),\n"
           "            'bytes': b'\\x00\\xff', 'complex': 1 + 2j, 'big': 10 ** 30, 'gen': (i * i for i in range(3)),\n"
           "            'neg0': -0.0, 'frozen': frozenset({3})}[kind]\n"
           "def sort_in_place(xs):\n    xs.sort()\n"
           "class Pair:\n    def __init__(self, a, b):\n        self.a, self.b = a, b\n"
           "def first(pairs):\n    return [p.a for p in pairs]\n")
    test = ("import math\n"
            "def check(candidate):\n"
            "    assert f('tuple') == (1, 2.5, 'x') and type(f('tuple')) is tuple\n"
            "    assert f('set') == {1, 2} and f('dict') == {(1, 2): [None, True]}\n"
            "    assert math.isnan(f('nan')) and f('bytes') == b'\\x00\\xff' and f('complex') == 1 + 2j\n"
            "    assert f('big') == 10 ** 30 and list(f('gen')) == [0, 1, 4] and f('frozen') == frozenset({3})\n"
            "    assert math.copysign(1, f('neg0')) == -1\n"
            "    xs = [3, 1, 2]\n    sort_in_place(xs)\n    assert xs == [1, 2, 3]\n"
            "    ps = [Pair(1, 2), Pair(3, 4)]\n    assert first(ps) == [1, 3] and ps[0].b == 2\n"
            "    assert ps[0] != ps[1] and ps[0] == ps[0]\n")
    r = check_solution(sol, test, "f")
    assert r.ok, r.reason


def test_helpers_of_the_prelude_are_the_judges_own():
    """A solution redefining a helper the test uses (HumanEval decode_cyclic) changes its own copy only."""
    prelude = "def encode(s):\n    return s[::-1]\n"
    test = "def check(candidate):\n    for s in ('abc', 'hello'):\n        assert candidate(encode(s)) == s\n"
    honest = prelude + "def decode(s):\n    return s[::-1]\n"
    cheat = "def encode(s):\n    return s\ndef decode(s):\n    return encode(s)\n"
    assert check_solution(honest, test, "decode", prelude=prelude).ok
    assert not check_solution(cheat, test, "decode", prelude=prelude).ok


def test_candidate_exceptions_keep_their_type_for_the_test():
    sol = "def f(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x\n"
    test = ("def check(candidate):\n    try:\n        candidate(-1)\n        assert False\n"
            "    except ValueError:\n        pass\n    assert candidate(2) == 2\n")
    assert check_solution(sol, test, "f").ok


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


DRIVER = r"""
import json, os, resource, sys, tempfile
n, limit = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
from concurrent.futures import ThreadPoolExecutor
from aflowctl.errors import SandboxError
from aflowctl.sandbox.harness import check_solution
good = "def add(a, b):\n    return a + b\n"
bad = "def add(a, b):\n    return a - b\n"
test = "def check(candidate):\n    assert candidate(1, 2) == 3\n"
fds0 = len(os.listdir('/proc/self/fd'))
def one(i):
    r = check_solution(good if i % 2 == 0 else bad, test, "add", timeout_s=10)
    return r.ok == (i % 2 == 0)
with ThreadPoolExecutor(max_workers=int(sys.argv[3])) as pool:
    right = sum(pool.map(one, range(n)))
errors = 0
os.environ["AFLOWCTL_SANDBOX_USER"] = "no-such-user-xyz"
for _ in range(5):
    try:
        check_solution(good, test, "add")
    except SandboxError:
        errors += 1
left = [p for p in os.listdir(tempfile.gettempdir())]
print(json.dumps({"right": right, "fds_before": fds0, "fds_after": len(os.listdir('/proc/self/fd')),
                  "left": left, "sandbox_errors": errors, "uid": os.getuid()}))
"""


def _drive(n: int, limit: int, workers: int, *, argv_prefix=(), python=sys.executable, timeout=600) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="aflowctl-fd-test-"))
    tmp.chmod(0o777)
    try:
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "TMPDIR": str(tmp)}
        out = subprocess.run([*argv_prefix, python, "-c", DRIVER, str(n), str(limit), str(workers)], env=env,
                             capture_output=True, text=True, timeout=timeout, check=False)
        assert out.returncode == 0, out.stderr[-3000:]
        res = json.loads(out.stdout.strip().splitlines()[-1])
        res["left_outside"] = [p.name for p in tmp.iterdir()]
        return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@needs_sandbox
def test_no_descriptor_or_file_leaks_and_sandbox_errors_leave_nothing():
    res = _drive(40, 64, 2)
    assert res["right"] == 40
    assert res["fds_after"] == res["fds_before"]
    assert res["left"] == [] and res["left_outside"] == []
    if os.geteuid() == 0:
        assert res["sandbox_errors"] == 5  # a missing sandbox user refuses, and leaves nothing behind


@needs_sandbox
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_thousand_checks_under_ulimit_256():
    res = _drive(2000, 256, 4, timeout=880)
    assert res["right"] == 2000
    assert res["fds_after"] == res["fds_before"]
    assert res["left"] == [] and res["left_outside"] == []


def _setpriv_nobody():
    system_py = shutil.which("python3", path="/usr/bin:/usr/local/bin")
    if os.geteuid() != 0 or shutil.which("setpriv") is None or system_py is None:
        pytest.skip("needs root, setpriv and a system python3 to start an unprivileged driver")
    if not confine.reachable_by_others(REPO / "aflowctl") or not confine.reachable_by_others(system_py):
        pytest.skip(f"{REPO} or {system_py} is not readable by other users")
    return ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"), system_py


def _nobody_cases(outside) -> dict[str, str]:
    """A representative subset (the full lists run as root above): keeps the suite cheap."""
    hostile = _hostile(outside)
    picked = {k: FORGERIES[k] for k in ("frame_walk", "always_equal", "os_exit_in_call", "write_every_fd")}
    picked.update({k: hostile[k] for k in ("read_env", "parent_environ", "open_store", "delete_home_file",
                                           "write_outside", "spawn_sh", "connect_loopback")})
    return picked


@needs_sandbox
def test_checks_as_an_unprivileged_user(outside):
    """CI may not run as root: the same forgeries, hostile code and leak check as `nobody`."""
    prefix, python = _setpriv_nobody()
    f = outside["files"]
    for p in [outside["base"], outside["base"] / "home", *f.values()]:
        os.chown(p, 65534, 65534)  # the unprivileged user owns them: only the sandbox protects them
    script = (
        "import json, sys\nfrom aflowctl.sandbox.harness import check_solution\n"
        f"cases = json.loads({json.dumps(json.dumps(_nobody_cases(outside)))})\n"
        f"test = {ADD_TEST!r}\n"
        "out = {k: check_solution(v, test, 'add', timeout_s=3, memory_mb=512).reason for k, v in cases.items()}\n"
        "print(json.dumps(out))\n"
    )
    out = subprocess.run([*prefix, python, "-c", script], env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
                                                              "OPENAI_API_KEY": "sk-sentinel-nobody"},
                         capture_output=True, text=True, timeout=170, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    reasons = json.loads(out.stdout.strip().splitlines()[-1])
    assert not [k for k, reason in reasons.items() if reason == "ok"], reasons
    assert "sentinel" not in out.stdout
    assert all(p.exists() for p in f.values())
    assert not outside["written"].exists()
    res = _drive(20, 64, 2, argv_prefix=prefix, python=python)
    assert res["uid"] == 65534 and res["right"] == 20 and res["fds_after"] == res["fds_before"]
    assert res["left"] == [] and res["left_outside"] == []


def test_bad_limits_raise_before_anything_is_created(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    tempfile.tempdir = None
    try:
        with pytest.raises(SandboxError):
            check_solution("", ADD_TEST, "add", timeout_s=0)
        with pytest.raises(SandboxError):
            check_solution("", ADD_TEST, "add", memory_mb=1)
        assert list(tmp_path.iterdir()) == []
    finally:
        tempfile.tempdir = None
