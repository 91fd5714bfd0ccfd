# Two commands on a fresh machine with only Python >= 3.11 and pip:
#   make run   - bootstrap .venv, simulate the demo registries, run the whole DAG into results/
#   make test  - bootstrap .venv, then the test suite (unit, then the slow integration tests)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2

.PHONY: run run-parkinson test lint bench clean wheelhouse install-offline

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# --force-use-threads: the demo's `run:` jobs (the simulator) run as threads of one Snakemake process; the
# validation and stage jobs are bare Python processes either way (workflow/scripts/).
run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --force-use-threads --configfile config/config.yaml
	@echo
	@echo "Done. Outputs are in results/:"
	@echo "  results/validation/report.md   validation summary (rows kept / rejected per reason)"
	@echo "  results/cohort/flow.json       cohort flow"
	@echo "  results/screen/dwas.csv        drug-wide screen: one row per class x lag x sex"
	@echo "  results/candidates/            ranked drug and mechanism candidates (+ README.md on the columns)"
	@echo "  results/report/index.html      the reviewer report (self-contained; opens offline)"
	@echo "  results/export/                what may leave the server: aggregates after disclosure control, manifest.csv"

# The second demo study: a Parkinson-like outcome from the diagnosis extract, in parkinson_demo/results/.
run-parkinson: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --force-use-threads --directory parkinson_demo --snakefile Snakefile --configfile config/parkinson_demo.yaml
	@echo "Done. Outputs are in parkinson_demo/results/ (report: parkinson_demo/results/report/index.html)"

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/snakemake --lint --configfile config/config.yaml > /dev/null
	$(BIN)/snakemake -n --quiet --configfile config/config.yaml
	$(BIN)/python -m pytest -q -m "not slow"
	$(BIN)/python -m pytest -q -m slow

# Offline install (secure servers have no package index). On a connected machine with the server's Python:
#   make wheelhouse   -> wheelhouse/: every pinned dependency as a wheel + requirements.lock with SHA-256 hashes
# carry wheelhouse/ in with the source tree, then on the server:
#   make install-offline  -> .venv from wheelhouse/ alone (pip --no-index --require-hashes)
# Another platform: make wheelhouse WHEEL_PLATFORM=manylinux2014_x86_64 WHEEL_PYTHON=3.11
WHEELHOUSE ?= wheelhouse
WHEEL_PLATFORM ?=
WHEEL_PYTHON ?=
WHEEL_TARGET := $(if $(WHEEL_PLATFORM),--platform $(WHEEL_PLATFORM) --only-binary=:all:) $(if $(WHEEL_PYTHON),--python-version $(WHEEL_PYTHON))

wheelhouse: $(STAMP)
	rm -rf $(WHEELHOUSE) && mkdir -p $(WHEELHOUSE)
	$(BIN)/python -m pip freeze --exclude-editable > $(WHEELHOUSE)/pins.txt
	echo "setuptools>=68" >> $(WHEELHOUSE)/pins.txt && echo wheel >> $(WHEELHOUSE)/pins.txt
	$(BIN)/python -m pip download --quiet --no-deps $(WHEEL_TARGET) --dest $(WHEELHOUSE) -r $(WHEELHOUSE)/pins.txt
	for sdist in $(WHEELHOUSE)/*.tar.gz $(WHEELHOUSE)/*.zip; do [ -e "$$sdist" ] || continue; \
		$(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir $(WHEELHOUSE) "$$sdist" && rm "$$sdist"; done
	rm $(WHEELHOUSE)/pins.txt
	$(BIN)/python -m repurpose.wheelhouse $(WHEELHOUSE)

install-offline:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-index --find-links $(WHEELHOUSE) --require-hashes -r $(WHEELHOUSE)/requirements.lock
	$(BIN)/python -m pip install --quiet --no-index --no-deps --no-build-isolation -e .
	touch $(STAMP)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_screen.py
	if [ -f results/candidates/drug_ranking.csv ]; then $(BIN)/python benchmarks/bench_ranking.py --results results --config config/config.yaml; \
	else echo 'bench_ranking: no finished demo run in results/ (make run first)'; fi
	# the same benchmark on a harder registry: the demo size with benchmarks/planted/weak_effects.csv planted
	mkdir -p /tmp/repurpose-bench/weak_effects
	printf 'simulate: {planted_substances: %s}\n' "$(CURDIR)/benchmarks/planted/weak_effects.csv" > /tmp/repurpose-bench/weak_effects/weak_effects.yaml
	$(BIN)/snakemake results/candidates/drug_ranking.csv -s Snakefile -d /tmp/repurpose-bench/weak_effects --cores 2 --force-use-threads \
		--configfile /tmp/repurpose-bench/weak_effects/weak_effects.yaml > /tmp/repurpose-bench/weak_effects/snakemake.log 2>&1
	$(BIN)/python benchmarks/bench_ranking.py --results /tmp/repurpose-bench/weak_effects/results --config config/config.yaml
	$(BIN)/python benchmarks/bench_scale.py --sizes 100000 300000 1000000 3000000 --workdir /tmp/repurpose-bench --out docs/benchmarks.md

clean:
	rm -rf results .snakemake parkinson_demo
