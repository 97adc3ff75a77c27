"""Preflight: a job reaches `prepared` only with checked data and a known cost."""
