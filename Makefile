# make demo / make test / make bench: each creates .venv and installs trilemma into it when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo demo-quick test test-fast bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[all,test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/trilemma demo --out runs/demo

demo-quick: $(STAMP)
	$(BIN)/trilemma demo --quick --out runs/demo-quick

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
test: $(STAMP)
	@$(BIN)/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; fi; exit $$rc

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) runs .pytest_cache
