"""segbench's launchers, registered where Hydra looks for plugins.

Hydra accepts a launcher only from a module of the ``hydra_plugins`` package, so the launcher configs name
these classes; the code is in :mod:`segbench.runtime`:

* ``hydra/launcher=slurm``: :class:`segbench.runtime.slurm.SlurmLauncher`;
* ``hydra/launcher=gpus``: :class:`segbench.runtime.gpus.GpuLauncher` (a sweep's jobs side by side over one
  machine's GPUs).
"""

from segbench.runtime.gpus import GpuLauncher as _SegbenchGpuLauncher
from segbench.runtime.slurm import SlurmLauncher as _SegbenchSlurmLauncher


class SlurmLauncher(_SegbenchSlurmLauncher):
    """``hydra/launcher=slurm``: see :mod:`segbench.runtime.slurm`."""


class GpuLauncher(_SegbenchGpuLauncher):
    """``hydra/launcher=gpus``: see :mod:`segbench.runtime.gpus`."""
