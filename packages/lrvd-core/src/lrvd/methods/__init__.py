"""Adapter methods shipped with lrvd-core (registered through the ``lrvd.methods`` entry points).

Only BayesLoRA lives here; the baselines are in the ``lrvd-baselines`` package.
"""
