"""Tidy tables, rank correlations with bootstrap intervals, and the study figures."""
