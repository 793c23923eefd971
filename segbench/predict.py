"""``segbench-predict run=<run dir> input=<scans> output=<dir>``: label maps of new scans in their own geometry.

The task itself (reading scans, the run's preprocessing, ensembles, test-time flips, writing in the
scan's geometry) is :func:`segbench.runtime.predict.predict_task`.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from .config import CONFIG_DIR, user_code_importable


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    from .errors import USER_ERRORS, report_error, unwrap
    from .runtime.console import quiet_third_party
    from .runtime.predict import predict_task

    quiet_third_party(single_process=True)
    user_code_importable()  # a run's loss._target_ / data.source._target_ in the user's module
    try:
        failed = predict_task(cfg)
    except USER_ERRORS as exc:
        report_error(unwrap(exc), "segbench-predict")
        sys.exit(1)
    if failed:
        sys.exit(1)


def cli() -> None:
    """``segbench-predict``: :func:`main` behind the checks of its command line."""
    from .runtime.checks import predict_argv_error

    error = predict_argv_error(sys.argv[1:])
    if error is not None:
        print(f"segbench-predict: error: {error}", file=sys.stderr)
        sys.exit(1)
    main()


if __name__ == "__main__":
    cli()
