"""Reporting: what the store holds about runs, as plain data, plots, markdown and HTML.

* :mod:`.history`: store -> plain data (``require_run``, ``load_history``, ``gather``,
  ``workflow_diff``), shared by everything below;
* :mod:`.plots`: matplotlib PNGs (report and compare);
* :mod:`.markdown`, :mod:`.html` (Jinja2 template ``templates/report.html.j2``);
* :mod:`.report` (``aflowctl report``), :mod:`.compare` (``aflowctl compare``),
  :mod:`.export` (``aflowctl export --aflow``).

Nothing here prints or exits; reads go through :mod:`aflowctl.store.queries`.
"""
