.PHONY: setup run quick lint test test-fast bench bench-smoke bench-throughput
setup:
	scripts/setup.sh --lib --jax
run:
	scripts/run.sh --runner=local
quick:
	scripts/run.sh --runner=local --quick
lint: setup
	.venv/bin/ruff check .
test:
	scripts/test.sh
test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow" tests
bench: setup
	.venv/bin/python benchmarks/accuracy.py --budget cpu
bench-smoke: setup
	.venv/bin/python benchmarks/accuracy.py --budget smoke
bench-throughput: setup
	scripts/setup.sh --torch
	.venv/bin/python benchmarks/throughput.py
