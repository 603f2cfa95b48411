"""The sandbox for untrusted code (workflow graphs, generated solutions); see docs/sandbox.md.

* :mod:`.confine`: confine the current process, for good (rlimits, an unprivileged
  uid when root, no-new-privs, parent-death signal, :mod:`.landlock`, :mod:`.seccomp`);
  ``capabilities()`` says what this machine offers;
* :mod:`.process`: ``run_python``, code run in a confined child (:mod:`.child`);
* :mod:`.harness`: ``check_solution``, a verdict decided by a judge process
  (:mod:`.judge`) against a candidate process (:mod:`.candidate`) that only answers
  with plain values (:mod:`.wire`).

Kept free of imports so that sandboxed children start fast.
"""
