"""Scores in, decisions and reports out: metrics, label-decision rules, `mlkit evaluate` and its plots."""
