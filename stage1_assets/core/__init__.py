"""Plain-Python core of stage1: no Dagster import anywhere in this package.

The GPU box and the benchmarks import these modules with only torch/transformers/peft present.
"""
