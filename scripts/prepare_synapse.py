#!/usr/bin/env python
"""Turn raw BTCV (Synapse) into TransUNet's preprocessed layout.

    python scripts/prepare_synapse.py RAW_DIR OUT_DIR

RAW_DIR holds ``RawData/Training/img/img00XX.nii.gz`` and ``label/label00XX.nii.gz`` (or is that
``Training`` folder itself). OUT_DIR receives ``train_npz/caseXXXX_sliceYYY.npz`` (the 18 train cases,
one axial slice per file), ``test_vol_h5/caseXXXX.npy.h5`` (the 12 test volumes) and
``lists_Synapse/{train.txt,test_vol.txt}``: HU clipped to [-125, 275] and scaled to [0, 1], the
13 BTCV labels mapped to the 8 evaluated organs. Files are written atomically (temporary name,
then rename); an interrupted run is resumed by running it again. Then train with

    segbench-train data=synapse data.root=OUT_DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from segbench.data.datasets.synapse import SYNAPSE_TEST, SYNAPSE_TRAIN, convert_btcv  # noqa: E402 - imported once sys.path holds the checkout
from segbench.errors import SegbenchError  # noqa: E402 - imported once sys.path holds the checkout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw_dir", help="raw BTCV folder (with RawData/Training/img and label)")
    parser.add_argument("out_dir", help="where to write train_npz/, test_vol_h5/, lists_Synapse/")
    parser.add_argument("--train", nargs="+", default=SYNAPSE_TRAIN, help="train case ids (default: TransUNet's 18)")
    parser.add_argument("--test", nargs="+", default=SYNAPSE_TEST, help="test case ids (default: TransUNet's 12)")
    parser.add_argument("--window", nargs=2, type=float, default=(-125.0, 275.0), metavar=("LOW", "HIGH"),
                        help="HU window mapped to [0, 1] (default: -125 275)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite files that already exist")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        stats = convert_btcv(args.raw_dir, args.out_dir, args.train, args.test, args.window,
                             overwrite=args.overwrite, progress=not args.no_progress)
    except SegbenchError as exc:
        print(f"prepare_synapse: error: {exc}", file=sys.stderr)
        return 1
    print(f"prepare_synapse: {stats['train_slices']} train slices, {stats['test_volumes']} test volumes "
          f"({stats['files_written']} files written) in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
