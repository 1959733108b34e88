"""The one door to accelerate's private process state.

accelerate keeps one state per process and refuses different settings later (a notebook trying bf16 after
fp32). It has no public way to start afresh; `AcceleratorState._reset_state` is its own (transformers'
TrainingArguments calls it too). Only this module touches it, with a fallback for versions without it.
"""

from __future__ import annotations

from accelerate import PartialState
from accelerate.state import AcceleratorState


def forget_single_process_state() -> bool:
    """Drop accelerate's state when it belongs to a single process (it holds nothing worth keeping then);
    under a multi-process launch the state belongs to the launch and stays. Returns whether it was dropped."""
    if not (PartialState._shared_state and PartialState().num_processes == 1):
        return False
    reset = getattr(AcceleratorState, "_reset_state", None)
    if reset is not None:
        reset(reset_partial_state=True)
    else:  # what _reset_state does: both classes keep their state in a class-level dict
        AcceleratorState._shared_state.clear()
        PartialState._shared_state.clear()
    return True
