"""Designs: the layer language, the built-in designs, building Keras models and the architecture report.

`pipeline.designs` itself (the layer language) loads no TensorFlow, so params validate in
milliseconds; keras_build and report do. May import: datasets, analysis, portable, core.
"""

from pipeline.designs.builtins import BUILTINS
from pipeline.designs.language import (
    CONVOLUTIONS,
    DENSES,
    LAYER_OPTIONS,
    POOLINGS,
    Design,
    Layer,
    check_course_rule,
    check_shapes,
    declared_layers,
    layer_key,
    layer_name,
    parse_design,
    parse_layer,
    parse_layers,
)

__all__ = [
    "BUILTINS",
    "CONVOLUTIONS",
    "DENSES",
    "LAYER_OPTIONS",
    "POOLINGS",
    "Design",
    "Layer",
    "check_course_rule",
    "check_shapes",
    "declared_layers",
    "layer_key",
    "layer_name",
    "parse_design",
    "parse_layer",
    "parse_layers",
]
