"""segbench's Slurm launcher, registered where Hydra looks for plugins.

Hydra accepts a launcher only from a module of the ``hydra_plugins`` package, so
``configs/hydra/launcher/slurm.yaml`` names this class; the code is :class:`segbench.runtime.slurm.SlurmLauncher`.
"""

from segbench.runtime.slurm import SlurmLauncher as _SegbenchSlurmLauncher


class SlurmLauncher(_SegbenchSlurmLauncher):
    """``hydra/launcher=slurm``: see :mod:`segbench.runtime.slurm`."""
