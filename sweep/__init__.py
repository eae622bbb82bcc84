"""sweep: find the stability-plasticity trade-off of forgetting mitigations with evidence."""

__version__ = "0.1.0"
