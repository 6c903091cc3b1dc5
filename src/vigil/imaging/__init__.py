"""The imaging pixel chain: stored DICOM values → model input, for training and the runtime.

A ``features``-layer package: it imports :mod:`vigil.core` and numpy only (no
torch, no pydicom), so the on-prem runtime and the training code call the same
functions. :mod:`vigil.dicom_adapter` turns a DICOM dataset into
``(stored values, DisplayParameters)``; training images (8-bit MedMNIST arrays)
go through :func:`training_inputs`, the degenerate case of the same chain.
See ``docs/imaging.md``.
"""

from vigil.imaging.chain import (
    MODEL_SIZE,
    apply_modality,
    apply_presentation,
    apply_voi,
    display_values,
    normalize,
    resize,
    to_model_input,
    training_inputs,
)
from vigil.imaging.colour import (
    ColourSpace,
    colour_model_input,
    colour_training_inputs,
    stored_colour_input,
    ybr_full_to_rgb,
)
from vigil.imaging.display import (
    DisplayParameters,
    LookupTable,
    Photometric,
    PresentationShape,
    VOIFunction,
    Window,
)
from vigil.imaging.histogram import INPUT_EDGES, N_BINS, input_histogram
from vigil.imaging.parity import MAX_PROBABILITY_DIFF, ParityReport, Scorer, measure_parity

__all__ = [
    "INPUT_EDGES",
    "MAX_PROBABILITY_DIFF",
    "MODEL_SIZE",
    "N_BINS",
    "ColourSpace",
    "DisplayParameters",
    "LookupTable",
    "ParityReport",
    "Photometric",
    "PresentationShape",
    "Scorer",
    "VOIFunction",
    "Window",
    "apply_modality",
    "apply_presentation",
    "apply_voi",
    "colour_model_input",
    "colour_training_inputs",
    "display_values",
    "input_histogram",
    "measure_parity",
    "normalize",
    "resize",
    "stored_colour_input",
    "to_model_input",
    "training_inputs",
    "ybr_full_to_rgb",
]
