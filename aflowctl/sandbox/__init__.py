"""The sandbox for untrusted code (workflow graphs, generated solutions); see docs/sandbox.md.

* :mod:`.confine`: confine the current process (rlimits, uid, Landlock, seccomp).

Kept free of imports so that sandboxed children start fast.
"""
