"""Deprecated name of `dfl.attention_check`, kept only while `dfl.experiments.attention` still
imports from here; delete this file once it imports `dfl.attention_check`."""

from dfl.attention_check import compare_attention, lab_bug_demo

__all__ = ["compare_attention", "lab_bug_demo"]
