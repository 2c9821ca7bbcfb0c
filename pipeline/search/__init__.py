"""The design search: the search space and its settings (space), and running an Optuna study over it (study).

`pipeline.search` itself (the space) loads neither Optuna nor TensorFlow, so params validate in
milliseconds; study does. May import: training, designs, datasets, tracking, analysis, portable, core.
"""

from pipeline.search.space import Candidate, SearchSettings, parse_search, settings_for

__all__ = ["Candidate", "SearchSettings", "parse_search", "settings_for"]
