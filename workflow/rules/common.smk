# Shared helpers of the rules: paths and resources derived from the validated config.
from repurpose.logs import run_logged

RESULTS = "results"
ATC_LEVELS = [int(level) for level in config["screen"]["atc_levels"]]
THREADS = int(config["resources"]["threads"])
MEM_MB = int(config["resources"]["memory_gb"] * 1024)


def extract_path(name):
    """Input path of a registry extract (file or directory) from the config."""
    return config["inputs"][name]["path"]
