"""Benchmark registry: importing this package registers every benchmark."""

from gemma3.evaluation.benchmarks import action_recognition, image_classification, mcq, qevd  # noqa: F401
from gemma3.evaluation.benchmarks.base import BENCHMARKS, Benchmark, EvalSample, get_benchmark, register_benchmark

__all__ = ["BENCHMARKS", "Benchmark", "EvalSample", "get_benchmark", "register_benchmark"]
