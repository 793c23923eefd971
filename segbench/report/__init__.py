"""Tables and figures from run directories, and the loss-behaviour probe.

* :mod:`segbench.report.runs`: find run directories (a Hydra sweep -> its jobs), read the
  results contract, recompute every number from ``results/per_case.csv``;
* :mod:`segbench.report.table`: ``segbench-table`` (Markdown, CSV, booktabs LaTeX);
* :mod:`segbench.report.figures`: ``segbench-figures`` (DSC vs gamma / focused organs,
  per-organ bars, the AFW focal term vs Dice, the probe);
* :mod:`segbench.report.probe`: every registered loss vs growing false positives / negatives.
"""
