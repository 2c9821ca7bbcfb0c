"""The pipeline's stages, one module per verb (dvc.yaml runs each as `python -m pipeline <verb>`):
download, split, normalize, train, evaluate, compare, and predict (not a DVC stage).

Each module declares its arguments and a `main(args, params)`; pipeline/cli.py runs it. Stages
never import each other. May import every layer but tools.
"""
