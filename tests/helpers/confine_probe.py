"""Confine this process, then try every escape; print one JSON object of outcomes.

    python confine_probe.py '<json config>'

config: scratch, memory_mb, targets (paths to read / write / delete), port (a
loopback TCP port to connect to), parent_pid, unix_socket (a listening path: one
connection to it is opened before confinement, as a worker's to the LLM gateway, and
the probe tries to open another after), allow_unsandboxed, read_packages (names whose
code may be imported), reads (paths to try reading after confinement),
imports (modules to try importing after confinement). Each probe records "ok:<value>"
or "err:<ExceptionName>"; the test decides what must have failed.
"""

import json
import os
import sys


def probe(fn):
    try:
        return "ok:" + repr(fn())[:200]
    except BaseException as exc:  # noqa: BLE001 - every outcome is data
        return "err:" + type(exc).__name__


def main() -> None:
    cfg = json.loads(sys.argv[1])
    from aflowctl.errors import SandboxError
    from aflowctl.sandbox.confine import confine_current_process

    import socket

    for name in cfg.get("preimport", ()):  # as a worker imports its plugins before confinement
        __import__(name)
    if cfg.get("workers"):  # as a rollout worker does before confinement
        from aflowctl.rollout.importer import preload_workers

        preload_workers()
    pre = None
    if cfg.get("unix_socket"):  # opened before confinement, like a worker's gateway connection
        pre = socket.socket(socket.AF_UNIX)
        pre.connect(cfg["unix_socket"])

    try:
        rep = confine_current_process(scratch_dir=cfg["scratch"], memory_mb=cfg.get("memory_mb", 512), cpu_s=20,
                                      nofile=cfg.get("nofile"), read_packages=cfg.get("read_packages", ()),
                                      allow_unsandboxed=cfg.get("allow_unsandboxed", False),
                                      allow_python_children=cfg.get("children", False))
    except SandboxError as exc:
        print(json.dumps({"sandbox_error": str(exc)}))
        return
    out = {"report": {"uid": rep.uid, "dropped_uid": rep.dropped_uid, "kept_caps": list(rep.kept_caps),
                      "landlock_fs": rep.landlock_fs, "landlock_net": rep.landlock_net, "seccomp": rep.seccomp,
                      "missing": list(rep.missing), "summary": rep.summary()}}
    import subprocess

    t = cfg.get("targets", {})
    out["env_has_secret"] = any("sentinel" in v for v in os.environ.values())
    out["parent_environ"] = probe(lambda: open(f"/proc/{cfg['parent_pid']}/environ", "rb").read())
    out["self_environ_other"] = probe(lambda: open("/proc/1/environ", "rb").read())
    out["read_secret"] = probe(lambda: open(t["secret"]).read())
    out["read_store"] = probe(lambda: open(t["store"], "rb").read(16))
    out["delete_home_file"] = probe(lambda: os.unlink(t["home_file"]))
    out["write_outside"] = probe(lambda: open(t["outside"], "w").write("x"))
    out["write_tmp"] = probe(lambda: open("/tmp/aflowctl-probe-%d" % os.getpid(), "w").write("x"))
    out["write_scratch"] = probe(lambda: open(os.path.join(cfg["scratch"], "f"), "w").write("x"))
    out["read_scratch"] = probe(lambda: open(os.path.join(cfg["scratch"], "f")).read())
    out["fork"] = probe(os.fork)
    out["spawn_sh"] = probe(lambda: subprocess.run(["sh", "-c", f"touch {t['outside']}"]).returncode)
    out["tcp_connect"] = probe(lambda: socket.create_connection(("127.0.0.1", cfg["port"]), timeout=2))
    out["udp"] = probe(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    out["socketpair"] = probe(lambda: len(socket.socketpair()))
    out["socketpair_dgram"] = probe(lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM))
    out["unix_new_socket"] = probe(lambda: socket.socket(socket.AF_UNIX))
    out["signal_parent"] = probe(lambda: os.kill(cfg["parent_pid"], 0))
    out["raise_limit"] = probe(lambda: __import__("resource").setrlimit(__import__("resource").RLIMIT_AS, (-1, -1)))
    out["alloc_10g"] = probe(lambda: len(bytearray(10 * 1024 ** 3)))
    out["import_stdlib"] = probe(lambda: __import__("decimal").Decimal(1) / 4)
    out["thread"] = probe(lambda: __import__("threading").Thread(target=int).start())
    out["asyncio"] = probe(lambda: __import__("asyncio").run(__import__("asyncio").sleep(0, "done")))
    if pre is not None:
        def talk():
            pre.sendall(b"hello")
            return pre.recv(16)

        def connect_again():
            s = socket.socket(socket.AF_UNIX)
            s.connect(cfg["unix_socket"])

        def reconnect_preopened():  # point the connection it holds somewhere else
            pre.connect(cfg["unix_socket"])

        out["unix_preopened"] = probe(talk)
        out["unix_connect"] = probe(connect_again)
        out["unix_reconnect"] = probe(reconnect_preopened)
    for path in cfg.get("reads", ()):
        out["read:" + path] = probe(lambda: open(path, "rb").read(12))
    for path in cfg.get("lists", ()):
        out["list:" + path] = probe(lambda: sorted(os.listdir(path))[:3])
    for name in cfg.get("imports", ()):
        out["import:" + name] = probe(lambda: __import__(name).__name__)
    for name in cfg.get("workers", ()):
        from aflowctl.rollout.importer import ImportFromStringError, resolve_worker

        try:
            out["worker:" + name] = "ok:" + resolve_worker(name).__name__
        except ImportFromStringError as exc:
            out["worker:" + name] = "err:" + str(exc)
    if cfg.get("children"):  # nested sandboxes work, and stay contained
        from aflowctl.sandbox.harness import check_solution
        from aflowctl.sandbox.process import run_python

        test = "def check(candidate):\n    assert candidate(1, 2) == 3\n"
        out["nested_check_good"] = probe(lambda: check_solution("def add(a, b):\n    return a + b\n", test, "add").reason)
        out["nested_check_bad"] = probe(lambda: check_solution("def add(a, b):\n    return 0\n", test, "add").reason)
        out["nested_run"] = probe(lambda: run_python("print(6 * 7)").stdout.strip())
        hostile = (f"import os\nfor act in (os.fork, lambda: open({t['secret']!r}).read(),\n"
                   "            lambda: open('/proc/1/environ').read(), lambda: os.execv('/bin/sh', ['sh'])):\n"
                   "    try:\n        act()\n        print('ESCAPED')\n    except OSError:\n        pass\n")
        out["nested_hostile"] = probe(lambda: run_python(hostile).stdout.strip())
        out["exec_python"] = probe(lambda: subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True,
                                                          text=True, check=False).stdout.strip())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
