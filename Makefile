# cvinterp — `make run` sets up and runs the default profile; `make test` sets up and tests.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all

.PHONY: setup run report docs test lint clean-venv rehearse

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

run: setup
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --report report.html

report: setup
	$(BIN)/snakemake --report report.html

# The README's comparison table and figures from a finished run: make docs RESULTS=results/<version>
docs: setup
	@test -n "$(RESULTS)" || (echo "usage: make docs RESULTS=results/<version>" && exit 2)
	$(BIN)/python -m cvinterp.showcase $(RESULTS)

# The paper profile at the papers' data sizes, on synthetic data in the real formats served
# locally, every training capped to a few steps; writes $(REHEARSAL)/results/rehearsal-full/
# rehearsal.md, the per-job table. SIZE=tiny is the test suite's few-minute version.
REHEARSAL ?= rehearsal
SIZE ?= full
rehearse: setup
	$(BIN)/python -m cvinterp.rehearsal --size $(SIZE) --workdir $(REHEARSAL)/$(SIZE) --cores $(CORES) --table

lint: setup
	$(BIN)/ruff check src tests workflow/scripts benchmarks
	$(BIN)/ruff format --check src tests workflow/scripts benchmarks
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint

test: lint
	$(BIN)/pytest -q -ra --durations=12

clean-venv:
	rm -rf $(VENV)
