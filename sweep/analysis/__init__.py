"""Analysis of a study's Parquet results: read, Pareto fronts, a production choice, plots, a report.

Import the submodules directly (``from sweep.analysis import io, pareto, plots``). This file stays
empty on purpose: ``sweep.cli`` imports the ``choose`` and ``report`` command modules to build its
parser, and ``sweep train`` should not pay for importing pandas or matplotlib.

- :mod:`sweep.analysis.io`: :func:`~sweep.analysis.io.load_study`, the :class:`~sweep.analysis.io.Study`.
- :mod:`sweep.analysis.pareto`: fronts, the seed-aware view, hypervolume, the no-trade-off check
  (one table's dominance in :mod:`sweep.analysis.dominance`).
- :mod:`sweep.analysis.choose`: the production choice (the constraint language in
  :mod:`sweep.analysis.constraints`, the :class:`Choice` and ``chosen.yaml`` in :mod:`sweep.analysis.chosen`).
- :mod:`sweep.analysis.plots`: front, sensitivity, accuracy matrix, several fronts (PNG); shared pieces in
  :mod:`sweep.analysis.drawing`, a module each for :mod:`~sweep.analysis.sensitivity_plot` and
  :mod:`~sweep.analysis.matrix_plot`.
- :mod:`sweep.analysis.report`: one self-contained HTML report (its tables in :mod:`sweep.analysis.report_tables`).
- :mod:`tests.fake_study`: hand-made studies for tests and notebooks.
"""
