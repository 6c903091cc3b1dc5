"""DP-SGD imaging recipe: choose it on validation, then score the official test split once.

FedAvg of the GroupNorm CNN (``CNNSpec(norm="group")``) on the four PneumoniaMNIST
scanner sites under DP-SGD at a target ε per site (δ = 1/n), as ``vigil federate
--task imaging --dp-epsilon``. For one recipe (rounds, batch size, learning rate,
clipping norm) it prints each round's pooled validation AUC and the kept round's
validation scores (each site at its own validation-best threshold); ``--test``
also scores the test split, which the recipe choice never reads. The noise multiplier
is not a free setting: it is calibrated per site so that ε after all planned steps
meets the target (:mod:`vigil.federation.privacy`), so it follows from the rounds,
the batch size (sample rate) and ε.

Usage::

    .venv/bin/python bench/imaging_dp.py --epsilon 8 --rounds 10 --batch-size 128 --lr 1e-3 \
        --sites-cache sites.npz --out dp.json [--test]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from imaging_federated import SHARED, _site_inputs  # noqa: E402


def main() -> None:
    from vigil.federation.cnn import SmallCNN
    from vigil.federation.driver import Plan
    from vigil.federation.image_compare import score_arm, validation_scores
    from vigil.federation.image_run import IMAGING_RECIPE, federate_images
    from vigil.federation.model import set_weights
    from vigil.federation.privacy import DPSettings
    from vigil.federation.strategies import make_strategy

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED) if SHARED.is_file() else "sample")
    parser.add_argument("--epsilon", type=float, required=True)
    parser.add_argument("--rounds", type=int, default=IMAGING_RECIPE["rounds"])
    parser.add_argument("--batch-size", type=int, default=IMAGING_RECIPE["batch_size"])
    parser.add_argument("--lr", type=float, default=IMAGING_RECIPE["lr"])
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sites-cache", type=Path)
    parser.add_argument("--test", action="store_true", help="also score the test split")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    split = _site_inputs(args.data, args.sites_cache)
    t = time.perf_counter()
    plan = Plan(rounds=args.rounds, local_epochs=1, batch_size=args.batch_size, lr=args.lr,
                weight_decay=IMAGING_RECIPE["weight_decay"], seed=args.seed,
                keep_by=IMAGING_RECIPE["keep_by"])
    run = federate_images(split["train"], split["val"], strategy=make_strategy("fedavg"),
                          plan=plan, dp=DPSettings(args.epsilon, max_grad_norm=args.clip),
                          on_round=lambda r: print(f"round {r.round}: pooled validation AUC "
                                                   f"{r.valid_auroc:.4f}", flush=True))
    net = SmallCNN(run.spec)
    set_weights(net, run.site_weights(None), strict=False)
    models = {name: net for name, _, _ in split["train"]}
    out = {"recipe": {"epsilon": args.epsilon, "rounds": args.rounds,
                      "batch_size": args.batch_size, "lr": args.lr, "clip": args.clip,
                      "seed": args.seed},
           "best_round": run.result.best_round,
           "privacy": {k: v.to_dict() for k, v in sorted(run.result.privacy.items())},
           "validation": validation_scores(models, split["val"])}
    if args.test:
        out["test"] = score_arm(models, run.thresholds(), split["test"])
    out["seconds"] = time.perf_counter() - t
    print(json.dumps({k: v for k, v in out.items() if k != "privacy"}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
