"""sqlinfer's benchmark: plain PyTorch, the usual Spark recipes and sqlinfer on the same images.

Run ``python bench/run.py --help``; docs/performance.md explains every figure it prints.
"""
