"""``segbench-eval ckpt_path=...``: score a checkpoint on its run's test split.

The training run's own config is loaded from ``<run>/.hydra/config.yaml`` (the
checkpoint lives in ``<run>/checkpoints/``), so data, model and loss always match
the checkpoint; ``metrics``, ``test`` and ``data`` overrides from the command
line are applied on top. Results go to this evaluation's own run directory.
The task itself, and what it trusts, is :func:`segbench.runtime.task.evaluate_checkpoint`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .config import CONFIG_DIR, user_code_importable


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from .errors import USER_ERRORS, report_error, unwrap
    from .runtime.console import quiet_third_party
    from .runtime.task import evaluate_checkpoint, remove_if_empty

    quiet_third_party(single_process=str(cfg.trainer.get("devices", 1)) == "1")
    user_code_importable()  # a training run's loss._target_ / data.source._target_ in the user's module
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        evaluate_checkpoint(cfg, output_dir)
    except USER_ERRORS as exc:
        report_error(unwrap(exc), "segbench-eval")
        remove_if_empty(output_dir)
        sys.exit(1)
    except BaseException:
        remove_if_empty(output_dir)
        raise


def cli() -> None:
    """``segbench-eval``: :func:`main` behind the checks that need no run directory."""
    from .runtime.checks import eval_argv_error

    error = eval_argv_error(sys.argv[1:])
    if error is not None:
        print(f"segbench-eval: error: {error}", file=sys.stderr)
        sys.exit(1)
    main()


if __name__ == "__main__":
    cli()
