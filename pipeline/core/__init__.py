"""The bottom layer: what every other layer uses and nothing in the project below it.

Errors a user can fix, params checkers, the project's paths, atomic files, progress and logging,
and the process helpers. Imports only the standard library and small third-party packages.
"""
