"""Statistics (intervals, exact paired tests, Holm) and figures: NumPy, SciPy and Matplotlib only.

May import: core.
"""
