"""``make bench``: speed and memory of this package as ratios measured in one run on one machine.

Each row is a module with ``run(settings) -> list[Row]``; ``python -m bench`` runs them, prints
one table and writes JSON. A ratio measured in one run holds on a noisy, shared machine where
absolute times do not; the absolute times are kept beside it for reference.
"""
