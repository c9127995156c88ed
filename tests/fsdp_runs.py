"""Several ``bin/train`` runs in one launch, one after another: ``accelerate launch --config_file
configs/accelerate/fsdp-cpu.yaml tests/fsdp_runs.py RUNS.json`` (a list of bin/train argument lists). The runs
are bin/train's own ``main`` in the same processes, so the test pays for one start of the sharded job, not one
per learner."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from offline_rl import train  # noqa: E402
from offline_rl.cli import end_process_group  # noqa: E402

if __name__ == "__main__":
    for argv in json.loads(Path(sys.argv[1]).read_text()):
        train.main(argv)
    end_process_group()
