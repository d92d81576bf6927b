# `make test` and `make demo` set themselves up from nothing: a .venv made with Python 3.12,
# the package installed (editable) with its test extra (and `mkl` on Intel CPUs), pinned by
# constraints.txt.
SHELL := /bin/bash
PYTHON312 := $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12; do $$p -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# On Intel CPUs the `mkl` extra too: MKL's sgemm then runs the CPU Dense matmuls.
EXTRAS := test$(shell grep -qs GenuineIntel /proc/cpuinfo && echo ,mkl)
PYTEST_ARGS ?= -n 2 --durations=15

.PHONY: test demo venv clean

venv: $(STAMP)

$(STAMP): setup.py constraints.txt Makefile
	@test -n "$(PYTHON312)" || { echo "error: Python 3.12 not found (tried python3.12 and ~/.pyenv/versions/3.12*)"; exit 1; }
	@test -x $(PY) || $(PYTHON312) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[$(EXTRAS)]'
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m meldae_jax.demo

clean:
	rm -rf $(VENV) build *.egg-info
