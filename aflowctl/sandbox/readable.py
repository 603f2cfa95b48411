"""What a confined process may read: the interpreter, the standard library, a few
system paths, and the *code* of the packages it uses; never their data.

Landlock has no deny rule and a rule on a directory covers its whole tree, so a
package folder that also ships data (a benchmark plugin's splits with their
answers, AFlow's sample files inside ``aflowctl``) cannot be given as a whole. Each
package tree is walked once (:func:`code_rules`): a folder whose tree holds only
code is given whole, any other folder can only be listed, and its code files are
given one by one. Code is a file whose name ends in :data:`CODE_SUFFIXES`. A site
directory (``site-packages``) can be listed, and its top-level ``.pth`` and ``.py``
files read (what an interpreter reads when it starts); the packages in it are
readable only when imported before confinement or named in ``packages``.

The result is a :class:`ReadRules`: ``trees`` (read anything beneath), ``listable``
(list names only) and ``files`` (read that file).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing is not imported at run time: sandboxed children start faster
if TYPE_CHECKING:
    from collections.abc import Iterable

#: file names a confined process may read inside a package: code, never data
#: (and shared libraries with a version after ``.so``, see :func:`is_code`)
CODE_SUFFIXES = (".py", ".pyc", ".so", ".pyd", ".pth", ".pyi", ".pxd", ".typed")

#: read-only system paths every Python needs (shared libraries, time zones, certificates)
SYSTEM_READ_PATHS = (
    "/usr/lib",
    "/usr/lib64",
    "/lib",
    "/lib64",
    "/usr/share/zoneinfo",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/ssl/certs",
    "/usr/share/ca-certificates",
)


class ReadRules:
    """Read rules for Landlock: ``trees`` whole, ``listable`` names only, ``files`` one by one.
    (A plain class: importing ``dataclasses`` would cost every sandboxed child milliseconds.)"""

    __slots__ = ("trees", "listable", "files")

    def __init__(self, trees: Iterable[str] = (), listable: Iterable[str] = (), files: Iterable[str] = ()):
        self.trees = tuple(dict.fromkeys(trees))
        self.listable = tuple(dict.fromkeys(listable))
        self.files = tuple(dict.fromkeys(files))

    def __add__(self, other: ReadRules) -> ReadRules:
        return ReadRules(self.trees + other.trees, self.listable + other.listable, self.files + other.files)

    def to_dict(self) -> dict:
        return {"trees": list(self.trees), "listable": list(self.listable), "files": list(self.files)}

    @classmethod
    def from_dict(cls, d: dict) -> ReadRules:
        return cls(d.get("trees") or (), d.get("listable") or (), d.get("files") or ())

    def __len__(self) -> int:
        return len(self.trees) + len(self.listable) + len(self.files)

    def __repr__(self) -> str:
        return f"ReadRules({len(self.trees)} trees, {len(self.listable)} listable, {len(self.files)} files)"


def is_code(name: str) -> bool:
    """Code by its name: a module, a compiled module or a shared library (``.so.5``)."""
    return name.endswith(CODE_SUFFIXES) or ".so." in os.path.basename(name)


def code_rules(root: str) -> ReadRules:
    """The rules that let a process read the code under ``root`` and nothing else.
    Symbolic links to folders are not followed (what they point to is not given)."""
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        return ReadRules(files=[root]) if is_code(root) and os.path.exists(root) else ReadRules()
    trees: list[str] = []
    listable: list[str] = []
    files: list[str] = []
    if _walk(root, trees, listable, files):
        return ReadRules(trees=[root])
    return ReadRules(trees, listable, files)


def _walk(folder: str, trees: list[str], listable: list[str], files: list[str]) -> bool:
    """True when ``folder``'s whole tree is code (the caller gives it whole); else adds
    the rules for the code in it and returns False."""
    pure = True
    code: list[str] = []
    subs: list[str] = []
    try:
        with os.scandir(folder) as entries:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    subs.append(e.path)
                elif e.is_file(follow_symlinks=False) and is_code(e.name):
                    code.append(e.path)
                else:
                    pure = False
    except OSError:
        return False
    parts: list[tuple[str, bool, list[str], list[str], list[str]]] = []
    for s in subs:
        t: list[str] = []
        sub_listable: list[str] = []
        f: list[str] = []
        whole = _walk(s, t, sub_listable, f)
        parts.append((s, whole, t, sub_listable, f))
        pure = pure and whole
    if pure:
        return True
    listable.append(folder)
    files.extend(code)
    for s, whole, t, sub_listable, f in parts:
        if whole:
            trees.append(s)
        else:
            trees.extend(t)
            listable.extend(sub_listable)
            files.extend(f)
    return False


def site_dirs() -> list[str]:
    """The interpreter's package folders (site-packages, dist-packages) that exist."""
    import sysconfig

    found = []
    for key in ("purelib", "platlib"):
        try:
            found.append(sysconfig.get_paths()[key])
        except KeyError:
            pass
    try:
        import site

        found += site.getsitepackages()
    except (AttributeError, ImportError):  # an embedded or isolated interpreter
        pass
    found += [e for e in sys.path if e and ("site-packages" in e or "dist-packages" in e)]
    return [p for p in dict.fromkeys(os.path.abspath(p) for p in found) if os.path.isdir(p)]


def interpreter_rules(packages: Iterable[str] = (), imported: bool = True) -> ReadRules:
    """What Python needs to keep running and importing: the standard library (less any
    site directory inside it), ``libpython``, ``pyvenv.cfg``, the site directories'
    own start-up files, and the code of every module already imported from outside
    the standard library (unless ``imported`` is false), plus that of ``packages``
    (names, found without importing)."""
    import sysconfig

    sites = site_dirs()
    std: list[str] = []
    for key in ("stdlib", "platstdlib"):
        try:
            std.append(sysconfig.get_paths()[key])
        except KeyError:
            pass
    std += [e for e in sys.path if e.endswith(".zip") or "lib-dynload" in e]
    rules = ReadRules()
    for pfx in dict.fromkeys((sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)):
        rules += ReadRules(files=[os.path.join(pfx, "pyvenv.cfg")])  # read by a venv interpreter at start-up
        libdir = os.path.join(pfx, "lib")
        try:
            names = os.listdir(libdir)
        except OSError:
            names = []
        rules += ReadRules(files=[os.path.join(libdir, n) for n in names if n.startswith("libpython")])
    for root in dict.fromkeys(os.path.abspath(p) for p in std):
        if os.path.exists(root):
            rules += _without_sites(root, sites)
    for site_dir in sites:
        try:
            names = os.listdir(site_dir)
        except OSError:
            continue
        rules += ReadRules(
            listable=[site_dir],
            files=[
                os.path.join(site_dir, n) for n in names if is_code(n) and os.path.isfile(os.path.join(site_dir, n))
            ],
        )
    roots = [r for m in list(sys.modules.values()) for r in _module_roots(m)] if imported else []
    roots += _package_roots(packages)
    return rules + _code_of(roots, skip=rules.trees)  # the standard library is given whole already


def child_rules() -> ReadRules:
    """What a sandboxed child of this interpreter may read (it imports only the standard
    library and ``aflowctl`` before it confines itself), computed by the parent once so
    that each child only adds the rules; :func:`package_rules` for generated code."""
    return interpreter_rules(("aflowctl",), imported=False) + system_rules()


def package_rules(packages: Iterable[str]) -> ReadRules:
    """The code of ``packages`` (names, found without importing), with their vendored
    libraries (``numpy.libs``)."""
    return _code_of(_package_roots(packages))


def _code_of(roots: list[str], skip: tuple[str, ...] = ()) -> ReadRules:
    """:func:`code_rules` of each root and of its wheel's vendored libraries
    (``numpy.libs`` beside ``numpy``), but for roots inside a tree of ``skip``."""
    rules = ReadRules()
    for root in dict.fromkeys(roots):
        if any(root == t or root.startswith(t + os.sep) for t in skip):
            continue
        rules += code_rules(root)
        if os.path.isdir(root + ".libs"):
            rules += code_rules(root + ".libs")
    return rules


def system_rules() -> ReadRules:
    """:data:`SYSTEM_READ_PATHS` (by their real paths: ``/lib`` is often ``/usr/lib``),
    less this interpreter's package folders in them (a system Python's
    ``/usr/lib/python3/dist-packages``; another interpreter's cannot be imported)."""
    sites = [os.path.realpath(p) for p in site_dirs()]
    rules = ReadRules()
    for p in dict.fromkeys(os.path.realpath(p) for p in SYSTEM_READ_PATHS):
        rules += _without_sites(p, sites) if os.path.isdir(p) else ReadRules(trees=[p])
    return rules


def _without_sites(root: str, sites: list[str]) -> ReadRules:
    """``root`` whole, unless a site directory lies inside it: then every entry of
    ``root`` but the one that leads to it, recursively."""
    inner = [s for s in sites if s.startswith(root + os.sep)]
    if not inner:
        return ReadRules(trees=[root])
    rules = ReadRules(listable=[root])
    try:
        names = os.listdir(root)
    except OSError:
        return rules
    for n in names:
        p = os.path.join(root, n)
        if p in inner:
            continue
        if any(s.startswith(p + os.sep) for s in inner):
            rules += _without_sites(p, inner)
        else:
            rules += ReadRules(trees=[p]) if os.path.isdir(p) else ReadRules(files=[p])
    return rules


def _module_roots(mod: object) -> list[str]:
    """The folder of a top-level package (each folder of a namespace package), or the
    file of a top-level module; none for a submodule or a built-in one."""
    name = getattr(mod, "__name__", "") or ""
    if "." in name:
        return []
    f = getattr(mod, "__file__", None)
    if not f:
        path = getattr(mod, "__path__", None)  # a namespace package: its folders
        return [os.path.abspath(p) for p in path] if path is not None else []
    f = os.path.abspath(f)
    return [os.path.dirname(f) if os.path.basename(f).startswith("__init__.") else f]


def _package_roots(names: Iterable[str]) -> list[str]:
    """Where each of ``names`` would be imported from, found without importing it (absent
    names are left out)."""
    return [r for r in (_package_root(name) for name in names) if r]


def _package_root(name: str) -> str | None:
    """Where ``name`` would be imported from, found without importing it (None if absent)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        locs = list(spec.submodule_search_locations)
        return os.path.abspath(locs[0]) if locs else None
    return os.path.abspath(spec.origin) if spec.origin and os.path.isabs(spec.origin) else None
