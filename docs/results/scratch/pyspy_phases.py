"""Where a profiled run of the example spent its training time (a one-off, not maintained).

Reads py-spy's raw (collapsed) stacks, written by

    py-spy record -r 50 -f raw -o prof.txt -- python examples/lits_cascade.py \\
        --steps 200 --tumour-steps 200 --validation-only --tumour-filter-cases 0 --out OUT

and prints, per stage (liver: ``train_stage``; tumour: ``train_tumour``), the samples of
each part of the training: forward (the step function), backward, optimizer, validation,
checkpoints, the data sets' building and the rest.

    python docs/results/scratch/pyspy_phases.py prof.txt
"""

import collections
import sys

PARTS = [  # (part, the frame name a stack must hold), first match wins
    ("validation", "Trainer._validate"),
    ("checkpoint", "CheckpointStore.save"),
    ("backward", "Precision.backward"),
    ("optimizer", "Precision.step"),
    ("forward", "Trainer._train_step"),
    ("loop, other", "Trainer._loop"),
    ("data sets", "datasets"),
]


def main(path: str) -> None:
    samples: collections.Counter[tuple[str, str]] = collections.Counter()
    for line in open(path):
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack:
            continue
        names = {frame.split(" (")[0] for frame in stack.split(";")}
        stage = "tumour" if "train_tumour" in names else "liver" if "train_stage" in names else ""
        if not stage:
            samples[("outside the trainings", "")] += int(count)
            continue
        part = next((p for p, name in PARTS if name in names), "other")
        samples[(stage, part)] += int(count)
    total = sum(samples.values())
    for (stage, part), n in sorted(samples.items()):
        print(f"{stage:22s} {part:12s} {n:7d} {100 * n / total:5.1f}%")


if __name__ == "__main__":
    main(sys.argv[1])
