"""nlpcal: calibrated confidence for fine-tuned transformer classifiers."""

__version__ = "0.1.0"
