"""The driver side of bam-search: CLI, Tuner, results and reports."""
__version__ = "0.1.0"
