"""Check that the stand-ins shipped with cgn (float16 packs) keep the quality of the trained ones.

    python scripts/check_shipped_stand_ins.py RUN/world [--eval-samples 10000]

RUN/world is the default world built by ``cgn reproduce imagenet --world wildlife-mnist``. The
shipped packs are installed into a temporary folder (every sha256 checked) and the pipeline's own
checks run on them: the BigGAN's class accuracy and Inception Score (world classifier) beside the
real test split's, and the U2-Net's IoU against the test masks. Compare with the ``gan`` and
``u2net`` stage records of a run that trained its stand-ins (docs/world.md).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

from cgn.core.results import read_results
from cgn.imagenet import reproduce_standins as si
from cgn.imagenet import shipped
from cgn.imagenet.reproduce import WorldReproduceConfig, WorldReproduction


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("world", type=Path, help="the built default world (RUN/world)")
    ap.add_argument("--eval-samples", type=int, default=WorldReproduceConfig().eval_samples)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = replace(WorldReproduceConfig(), world=str(a.world.resolve()), eval_samples=a.eval_samples)
        rep = WorldReproduction(cfg, Path(tmp) / "run", "check_shipped_stand_ins")  # a scratch run
        rep.stand_ins = {}
        for entry in shipped.SHIPPED:
            folder = Path(tmp) / entry.folder_name
            shipped.install(entry, folder)
            rep.stand_ins[entry.kind] = str(si._finished(entry.kind, folder, read_results(folder)))
        out = {"gan": si.gan_check(rep), "u2net": si.u2net_iou(rep)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
