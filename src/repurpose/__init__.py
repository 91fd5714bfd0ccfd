"""repurpose: a drug-wide association study of multiple sclerosis on linked national registries."""

__version__ = "0.1.0"
