# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= train,export,featurize,federate,dev
PRESET ?= default
RUN ?= runs/$(PRESET)

.PHONY: demo test venv clean

$(BIN)/.installed-$(EXTRAS): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip setuptools wheel -c constraints.txt
	$(BIN)/python -m pip install -c constraints.txt -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip check
	touch $@

venv: $(BIN)/.installed-$(EXTRAS)

demo: venv
	$(BIN)/edge-rec pipeline --preset $(PRESET) --out $(RUN) --overwrite
	@echo "report: $(RUN)/report.md  (machine-readable: $(RUN)/report.json)"

test: venv
	$(BIN)/python -m pytest -q --durations=15 tests

clean:
	rm -rf $(VENV) runs
