"""Evaluation: IIT benchmark, multiple-choice pools, scoring and analysis."""
