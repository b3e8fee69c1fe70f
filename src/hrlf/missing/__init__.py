"""Missing-modality simulation: pure mask functions (``patterns``) and protocols (``protocol``).

See ``docs/protocols.md`` for the training and evaluation protocols, their names in results files and their
determinism guarantees.
"""

from hrlf.missing.patterns import (
    PROPER_SUBSETS,
    frame_mask,
    modality_mask,
    ranked_drop,
    sample_subsets,
    unk_tokens,
)
from hrlf.missing.protocol import (
    INTER_CONDITIONS,
    INTRA_RATES,
    MISSING_CONDITIONS,
    EvalMaskBank,
    EvalMissing,
    InterModality,
    IntraModality,
    ModalityStochasticMissing,
    TrainMissing,
    apply_missing,
    inter_sweep,
    intra_sweep,
)

__all__ = [
    "INTER_CONDITIONS",
    "INTRA_RATES",
    "MISSING_CONDITIONS",
    "PROPER_SUBSETS",
    "EvalMaskBank",
    "EvalMissing",
    "InterModality",
    "IntraModality",
    "ModalityStochasticMissing",
    "TrainMissing",
    "apply_missing",
    "frame_mask",
    "inter_sweep",
    "intra_sweep",
    "modality_mask",
    "ranked_drop",
    "sample_subsets",
    "unk_tokens",
]
