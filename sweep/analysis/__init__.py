"""Analysis of a study's Parquet results: read, Pareto fronts, a production choice, plots, a report.

Import the submodules directly (``from sweep.analysis import io, pareto, plots``). This file stays
empty on purpose: ``sweep.cli`` imports the ``choose`` and ``report`` command modules to build its
parser, and ``sweep train`` should not pay for importing pandas or matplotlib.

- :mod:`sweep.analysis.io`: :func:`~sweep.analysis.io.load_study`, the :class:`~sweep.analysis.io.Study`.
- :mod:`sweep.analysis.pareto`: fronts, the seed-aware view, hypervolume, the no-trade-off check.
- :mod:`sweep.analysis.choose`: the constraint language and the production choice (``chosen.yaml``).
- :mod:`sweep.analysis.plots`: front, sensitivity, accuracy matrix, several fronts (PNG).
- :mod:`sweep.analysis.report`: one self-contained HTML report.
- :mod:`tests.fake_study`: hand-made studies for tests and notebooks.
"""
