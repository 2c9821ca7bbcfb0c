"""params.yaml as validated, typed objects: it composes the schemas of the layers below
(datasets, designs, the training recipe), so it sits above them.

May import: training, designs, datasets, analysis, portable, core.
"""

from pipeline.config.params import PARAMS_FILE, DatasetParams, NormalizeParams, Params, load_params, parse_params

__all__ = ["PARAMS_FILE", "DatasetParams", "NormalizeParams", "Params", "load_params", "parse_params"]
