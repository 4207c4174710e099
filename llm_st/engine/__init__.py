"""The one training engine: Accelerate loop, checkpoints, early stopping, seeding, runs.

- :func:`train`: a :class:`~llm_st.config.Recipe` into a run directory (what
  ``llm-st train`` calls);
- :func:`fit_and_evaluate`: an already built model, trained (or fit) and tested;
- :class:`Trainer`: the loop itself, for code that builds its own model and objective.
"""

from llm_st.engine.checkpoint import CheckpointManager, load_weights, save_weights
from llm_st.engine.run import build_task, fit_and_evaluate, open_run_dir, train
from llm_st.engine.rundir import RunDir
from llm_st.engine.seeding import epoch_order, seed_everything
from llm_st.engine.trainer import Trainer, TrainState, count_parameters

__all__ = [
    "CheckpointManager",
    "RunDir",
    "TrainState",
    "Trainer",
    "build_task",
    "count_parameters",
    "epoch_order",
    "fit_and_evaluate",
    "load_weights",
    "open_run_dir",
    "save_weights",
    "seed_everything",
    "train",
]
