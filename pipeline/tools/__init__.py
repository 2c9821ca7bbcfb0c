"""Commands around the stages: the parallel runner (repro), the MLflow UI, the tracking server's
and the spool's commands, and the architecture report.

Each module declares its arguments and a `main(args, params)`; pipeline/cli.py runs it.
May import every layer but stages.
"""
