"""What runs a training run: building it (:mod:`.build`), its start-up checks (:mod:`.checks`), the tasks the
commands run (:mod:`.task`), its directory and resume (:mod:`.rundir`), checkpoints (:mod:`.checkpoint`),
seeding (:mod:`.seeding`), the non-finite stop (:mod:`.nonfinite`), distributed runs (:mod:`.distributed`),
what it records (:mod:`.runinfo`) and prints (:mod:`.console`), every callback (:mod:`.callbacks`), sweeps
(:mod:`.sweep`), the launchers for Slurm (:mod:`.slurm`) and for one machine's GPUs (:mod:`.gpus`), and what a
config read back from disk may build (:mod:`.trust`)."""
