"""Training: the recipe schema, learning-rate schedules, augmentation, checkpoints, compiling a model,
and how it computes (threads, precision, device).

May import: designs, datasets, analysis, portable, core.
"""
