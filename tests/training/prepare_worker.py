"""Worker for the rank-0 preparation test: `torchrun --nproc_per_node 2 prepare_worker.py DATA IMAGES OUT`.

Each rank loads the training data the way `wings train` does and writes what it saw to OUT/rank{r}.json:
the preparation log lines of `wings.data.prepared` and the token counts of its data set."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "data"))


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def main() -> None:
    import torch.distributed as dist

    from llava_fixtures import make_processor
    from wings.training.recipe import load_recipe
    from wings.training.run import data_sources, load_training_data, training_arguments

    data, images, out = sys.argv[1:4]
    handler = Collect()
    log = logging.getLogger("wings.data.prepared")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    recipe = load_recipe("wings_stage1", ["data.max_length=256", "data.num_proc=1"])
    args = training_arguments(recipe, out, max_steps=1)
    dataset = load_training_data(recipe, data_sources(recipe, data), make_processor(), args, images)
    rank = dist.get_rank()
    (Path(out) / f"rank{rank}.json").write_text(json.dumps({
        "world": dist.get_world_size(), "log": handler.lines, "lengths": dataset.lengths.tolist()}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
