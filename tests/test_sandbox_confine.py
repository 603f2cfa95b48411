"""confine_current_process: a confined process (root, or already unprivileged) cannot
escape. Each test runs the real probe (tests/helpers/confine_probe.py) in a child,
since confinement is irreversible, and checks every outcome it reports."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from aflowctl.sandbox import confine

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]
PROBE = REPO / "tests" / "helpers" / "confine_probe.py"
SYSTEM_PY = shutil.which("python3", path="/usr/bin:/usr/local/bin")
CAPS = confine.capabilities()
needs_sandbox = pytest.mark.skipif(not CAPS["ok"], reason=f"sandbox unavailable here: {CAPS['problems']}")


def _nobody() -> tuple[int, int] | None:
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid


@pytest.fixture
def world(tmp_path):
    """Things outside the scratch dir that must stay untouched, a loopback listener
    and a unix socket that answers."""
    owner = _nobody() if os.geteuid() == 0 else None
    base = Path(tempfile.mkdtemp(prefix="aflowctl-confine-test-"))
    base.chmod(0o755)
    scratch = base / "scratch"
    scratch.mkdir()
    home = base / "home"
    home.mkdir()
    files = {"secret": home / "id_rsa", "store": home / "aflowctl.db", "home_file": home / "notes.txt"}
    for name, p in files.items():
        p.write_text(f"{name} sentinel\n")
    outside = base / "outside.txt"
    if owner:  # readable and writable by the sandbox user: only the sandbox must stop it
        for p in [scratch, home, *files.values()]:
            os.chown(p, *owner)
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    sock_path = str(base / "gw.sock")
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(sock_path)
    unix.listen(1)

    def answer() -> None:
        try:
            conn, _ = unix.accept()
            conn.sendall(b"ok:" + conn.recv(16))
            conn.close()
        except OSError:
            pass

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    yield {"base": base, "scratch": scratch, "files": files, "outside": outside, "port": tcp.getsockname()[1],
           "unix_socket": sock_path}
    tcp.close()
    unix.close()
    shutil.rmtree(base, ignore_errors=True)


def _run_probe(world, *, argv_prefix=(), python=sys.executable, env_extra=None, **cfg) -> dict:
    f = world["files"]
    config = {"scratch": str(world["scratch"]), "parent_pid": os.getpid(), "port": world["port"],
              "targets": {"secret": str(f["secret"]), "store": str(f["store"]), "home_file": str(f["home_file"]),
                          "outside": str(world["outside"])}, **cfg}
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "OPENAI_API_KEY": "sk-sentinel-123",
           **(env_extra or {})}
    t0 = time.monotonic()
    out = subprocess.run([*argv_prefix, python, str(PROBE), json.dumps(config)], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["elapsed_s"] = time.monotonic() - t0
    return res


def _assert_contained(res: dict, world, children: bool = False) -> None:
    assert "sandbox_error" not in res, res
    escapes = ["parent_environ", "self_environ_other", "read_secret", "read_store", "delete_home_file",
               "write_outside", "write_tmp", "spawn_sh", "tcp_connect", "udp", "raise_limit", "alloc_10g",
               "unix_new_socket", "socketpair_dgram"]
    if not children:  # a worker allowed Python children may fork, and signal inside its own domain
        escapes += ["fork", "signal_parent"]
    for key in escapes:
        assert res[key].startswith("err:"), (key, res[key])
    assert res["alloc_10g"] == "err:MemoryError"
    for key in ("write_scratch", "read_scratch", "socketpair", "import_stdlib", "thread", "asyncio"):
        assert res[key].startswith("ok:"), (key, res[key])
    assert res["read_scratch"] == "ok:'x'"
    assert all(p.exists() for p in world["files"].values())
    assert not world["outside"].exists()
    assert res["report"]["seccomp"] and res["report"]["landlock_fs"] and not res["report"]["missing"]
    assert res["elapsed_s"] < 30


@needs_sandbox
def test_confined_process_cannot_escape(world):
    res = _run_probe(world, memory_mb=512)
    _assert_contained(res, world)
    if os.geteuid() == 0:
        assert res["report"]["dropped_uid"] and res["report"]["uid"] != 0


@needs_sandbox
def test_unprivileged_user_is_confined_too(world):
    """The same probe run as `nobody` from the start (CI may not be root)."""
    if os.geteuid() != 0 or _nobody() is None or shutil.which("setpriv") is None or SYSTEM_PY is None:
        pytest.skip("needs root, setpriv, a `nobody` user and a system python3 to start an unprivileged driver")
    if not confine.reachable_by_others(REPO / "aflowctl"):
        pytest.skip(f"{REPO} is not readable by other users")
    res = _run_probe(world, memory_mb=512, python=SYSTEM_PY,
                     argv_prefix=("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"))
    _assert_contained(res, world)
    assert res["report"]["uid"] == _nobody()[0] and not res["report"]["dropped_uid"]
    assert res["report"]["kept_caps"] == []


@needs_sandbox
def test_root_with_a_world_readable_interpreter_keeps_no_capability(world):
    """The fix doctor suggests: with an interpreter `nobody` can read, root drops to it
    with no capability left."""
    if os.geteuid() != 0 or _nobody() is None or SYSTEM_PY is None:
        pytest.skip("needs root, a `nobody` user and a system python3")
    if not (confine.reachable_by_others(SYSTEM_PY) and confine.reachable_by_others(REPO / "aflowctl")):
        pytest.skip("the system python3 or this checkout is not readable by other users")
    res = _run_probe(world, python=SYSTEM_PY)
    _assert_contained(res, world)
    assert res["report"]["dropped_uid"] and res["report"]["kept_caps"] == []


@needs_sandbox
def test_packages_code_is_readable_and_their_data_is_not(world):
    """A confined process imports the code of what it imported, and of the packages it
    is told about, but reads no data file: not those a package ships (AFlow's samples
    inside aflowctl, with their answers; a benchmark plugin's splits), not the fetched
    splits under AFLOWCTL_HOME/data, not the site directory's other packages."""
    import importlib.util
    import sysconfig

    home = world["base"] / "home"
    (home / "data").mkdir()
    fetched = home / "data" / "gsm8k_validate.jsonl"
    fetched.write_text('{"question": "q", "answer": "42"}\n')
    for p in (home / "data", fetched):
        os.chown(p, *(_nobody() or (os.getuid(), os.getgid())))
    pkg = REPO / "aflowctl"
    site_dir = sysconfig.get_paths()["purelib"]
    dist_info = next(str(p) for p in sorted(Path(site_dir).glob("*.dist-info/METADATA")))
    reads = [str(pkg / "benchmarks" / "sample" / "gsm8k_sample.jsonl"), str(pkg / "benchmarks" / "sample" / "SOURCE.md"),
             str(pkg / "benchmarks" / "gsm8k.py"), str(fetched), dist_info]
    arith = importlib.util.find_spec("aflowctl_arith")  # a benchmark plugin, imported before confinement
    if arith is not None and arith.origin:
        reads += [str(p) for p in sorted((Path(arith.origin).parent / "data").glob("*.jsonl"))[:1]]
    res = _run_probe(world, reads=reads, lists=[str(pkg / "benchmarks" / "sample")],
                     preimport=["aflowctl.benchmarks", *(["aflowctl_arith"] if arith is not None else [])],
                     imports=["aflowctl.benchmarks.gsm8k", "mpmath", "json.tool", "hypothesis"], read_packages=["mpmath"],
                     workers=["evaluate", "hypothesis.strategies:integers"])
    _assert_contained(res, world)  # the store (home/aflowctl.db) and home/id_rsa included
    assert res[f"read:{pkg / 'benchmarks' / 'gsm8k.py'}"].startswith("ok:")  # code
    for data in (*reads[:2], str(fetched), dist_info, *reads[5:]):
        assert res[f"read:{data}"] == "err:PermissionError", data
    assert res[f"list:{pkg / 'benchmarks' / 'sample'}"].startswith("ok:")  # names only
    assert res["import:aflowctl.benchmarks.gsm8k"] == "ok:'aflowctl'"  # a module not imported yet, of a package that is
    assert res["import:mpmath"] == "ok:'mpmath'"  # named in read_packages
    assert res["import:json.tool"] == "ok:'json'"  # the standard library
    assert res["import:hypothesis"].startswith("err:"), "a package neither imported nor named"
    # rollout workers: an entry point imported before confinement resolves; an unreadable module says what to do
    assert res["worker:evaluate"] == "ok:evaluate"
    assert "cannot be read in a confined rollout worker" in res["worker:hypothesis.strategies:integers"]
    assert "preload" in res["worker:hypothesis.strategies:integers"]


@needs_sandbox
def test_only_a_unix_connection_opened_before_confinement_is_usable(world):
    """As a rollout worker's connection to the LLM gateway: the one opened before
    confinement works; no other socket can be made, connected or re-pointed."""
    res = _run_probe(world, unix_socket=world["unix_socket"])
    _assert_contained(res, world)
    assert res["unix_preopened"] == "ok:b'ok:hello'"
    assert res["unix_connect"] == "err:PermissionError"
    assert res["unix_reconnect"].startswith("err:")


@needs_sandbox
def test_worker_allowed_python_children_runs_nested_sandboxes(world):
    """allow_python_children (a rollout worker whose operators run code): the worker may
    execute the interpreter and nothing else; nested sandboxes work and stay contained."""
    res = _run_probe(world, children=True)
    _assert_contained(res, world, children=True)
    if CAPS["landlock_abi"] >= 6:
        assert res["signal_parent"].startswith("err:")  # Landlock's scoping: not outside its domain
    assert res["nested_check_good"] == "ok:'ok'"
    assert res["nested_check_bad"].startswith("ok:'exception: AssertionError")
    assert res["nested_run"] == "ok:'42'"
    assert res["nested_hostile"] == "ok:''"
    assert res["exec_python"] == "ok:'1'"


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid layer is only required as root")
def test_missing_layer_refuses_unless_allowed(world):
    """As root with a sandbox user that does not exist, the uid layer is missing:
    SandboxError naming the fix, or a report that says so with allow_unsandboxed."""
    res = _run_probe(world, env_extra={"AFLOWCTL_SANDBOX_USER": "no-such-user-xyz"})
    assert "sandbox_error" in res and "rollout.allow_unsandboxed" in res["sandbox_error"]
    assert "no-such-user-xyz" in res["sandbox_error"]
    res = _run_probe(world, allow_unsandboxed=True, env_extra={"AFLOWCTL_SANDBOX_USER": "no-such-user-xyz"})
    assert res["report"]["missing"] == ["uid"] and res["report"]["uid"] == 0
    assert "MISSING: uid" in res["report"]["summary"]


@needs_sandbox
def test_confined_process_dies_with_its_parent(tmp_path):
    """PR_SET_PDEATHSIG survives the uid drop: killing the parent kills the child."""
    scratch = Path(tempfile.mkdtemp(prefix="aflowctl-confine-test-"))
    pidfile = tmp_path / "pid"
    child = (f"from aflowctl.sandbox.confine import confine_current_process\n"
             f"confine_current_process(scratch_dir={str(scratch)!r}, memory_mb=512)\n"
             "import time\ntime.sleep(60)\n")
    parent = (f"import subprocess, sys\np = subprocess.Popen([sys.executable, '-c', {child!r}])\n"
              f"open({str(pidfile)!r}, 'w').write(str(p.pid))\nimport time\ntime.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", parent], env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 30
        while not pidfile.exists() or not pidfile.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        cpid = int(pidfile.read_text())
        time.sleep(1.0)  # let the child confine itself
        assert Path(f"/proc/{cpid}").exists()
        p.kill()
        p.wait()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{cpid}").exists() and "Z" not in _state(cpid):
            assert time.monotonic() < deadline, "the confined child outlived its parent"
            time.sleep(0.05)
    finally:
        p.kill()
        shutil.rmtree(scratch, ignore_errors=True)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "gone"


def test_capabilities_report_layers_and_fixes():
    caps = confine.capabilities()
    for key in ("landlock_abi", "seccomp", "can_drop_uid", "interpreter_usable", "needs_read_capability", "ok",
                "problems"):
        assert key in caps
    assert caps["ok"] == (not caps["problems"])
    for p in caps["problems"]:
        assert p["layer"] and p["detail"] and p["fix"] and "\n" not in p["fix"]
    if os.geteuid() == 0 and caps["sandbox_user"]:
        assert caps["can_drop_uid"]


def test_a_process_with_threads_is_refused(tmp_path):
    """Landlock and setresuid hold the calling thread only: confining a threaded process would be a sham."""
    code = ("import threading, time, json\nfrom aflowctl.errors import SandboxError\n"
            "from aflowctl.sandbox.confine import confine_current_process\n"
            "threading.Thread(target=time.sleep, args=(5,), daemon=True).start()\n"
            f"try:\n    confine_current_process(scratch_dir={str(tmp_path)!r}, memory_mb=512)\n"
            "    print('confined')\nexcept SandboxError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=60, check=False)
    assert "already runs 2 threads" in out.stdout and "confine before starting threads" in out.stdout, out


def test_scratch_must_exist(tmp_path):
    from aflowctl.errors import SandboxError

    with pytest.raises(SandboxError, match="does not exist"):
        confine.confine_current_process(scratch_dir=tmp_path / "nope", memory_mb=512)
